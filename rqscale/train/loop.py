"""The training loop for one process: data -> task -> trainer -> metrics, evaluation and pictures.

No Ray and no argparse: `python -m rqscale.train` and the tests both call `run()`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import torch

from rqscale.config import Config, ConfigError, save_resolved
from rqscale.data import batches, bundled_dataset
from rqscale.eval import coarse_to_fine
from rqscale.tasks import Stage1Task
from rqscale.train.stage1 import Stage1Trainer
from rqscale.utils.images import save_grid

EVAL_SEED_OFFSET = 10_000  # held-out crops come from another seed than the training crops


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_dir_of(cfg: Config) -> str:
    return os.path.join(cfg.run.output_dir, cfg.run.name)


def check_runnable(cfg: Config) -> None:
    """What this single-process build cannot run yet, refused with the key to change."""
    if cfg.data.kind != "bundled":
        raise ConfigError("data.kind", f"'{cfg.data.kind}' readers are not part of this build yet", "use data.kind=bundled")
    if cfg.train.num_workers != 1:
        raise ConfigError("train.num_workers", f"{cfg.train.num_workers} workers need the distributed launcher, not in this build yet",
                          "set train.num_workers=1 and train.micro_batch x train.grad_accum = train.global_batch")
    if cfg.run.init_from and cfg.run.init_from.startswith("s3://"):
        raise ConfigError("run.init_from", "s3:// weights are not readable in this build yet", "copy the file locally and point run.init_from at it")


def load_init_weights(task: Stage1Task, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = task.rqvae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError("run.init_from", f"'{path}' does not match this RQ-VAE (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          "use a checkpoint trained with the same rqvae.* settings")


def run(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Train stage 1 for cfg.train.max_steps and return a summary (also written to summary.json)."""
    check_runnable(cfg)
    out_dir = run_dir_of(cfg)
    save_resolved(cfg, os.path.join(out_dir, "config.yaml"))
    torch.manual_seed(cfg.run.seed)
    device = resolve_device(cfg.train.device)
    train_images, eval_images = _datasets(cfg)
    task = Stage1Task(cfg)
    if cfg.run.init_from:
        load_init_weights(task, cfg.run.init_from)
    task = task.to(device)
    trainer = Stage1Trainer(task, cfg)
    eval_images = eval_images.to(device)
    before = coarse_to_fine(task.rqvae, eval_images)
    history = _train(cfg, trainer, train_images, device, out_dir, log)
    after = coarse_to_fine(task.rqvae, eval_images)
    picture = _picture(task, eval_images[:8], os.path.join(out_dir, "reconstructions.png"))
    summary = _summary(cfg, before, after, history, picture)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    torch.save(task.rqvae.state_dict(), os.path.join(out_dir, "rqvae.pt"))
    return summary


def _datasets(cfg: Config):
    res, data = cfg.rqvae.resolution, cfg.data
    train, _ = bundled_dataset(data.bundled_set, res, data.num_samples, seed=cfg.run.seed)
    if data.bundled_set == "photos":
        held_out, _ = bundled_dataset("photos", res, 256, seed=cfg.run.seed + EVAL_SEED_OFFSET)
        return train, held_out
    return train[256:], train[:256]  # digits: first 256 held out


def _train(cfg: Config, trainer: Stage1Trainer, images: torch.Tensor, device, out_dir: str, log) -> list:
    t = cfg.train
    stream = batches(images, t.micro_batch, seed=cfg.run.seed)
    history, start = [], time.perf_counter()
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as metrics_file:
        for step in range(t.max_steps):
            micro = [next(stream).to(device) for _ in range(t.grad_accum)]
            metrics = {"step": step, **trainer.step(micro, step)}
            history.append(metrics)
            metrics_file.write(json.dumps(metrics) + "\n")
            if step % t.log_every == 0 or step == t.max_steps - 1:
                elapsed = time.perf_counter() - start
                log(f"step {step:>6}  recon {metrics['g/recon']:.4f}  commit {metrics['g/commit']:.4f}  "
                    f"lpips {metrics['g/lpips']:.4f}  codes/batch {metrics['batch_code_usage']:.3f}  {elapsed:.0f}s")
    return history


@torch.no_grad()
def _picture(task: Stage1Task, images: torch.Tensor, path: str) -> str:
    """Originals, then G(Z^(d)) for d = 1..D: the coarse-to-fine rows of Fig. 5."""
    model = task.rqvae.eval()
    codes = model.encode(images)
    rows = [images] + [model.decode_codes(codes, depth=d) for d in range(1, model.cfg.code_shape[2] + 1)]
    model.train()
    return save_grid(rows, path, scale=max(1, 128 // images.shape[-1]))


def _summary(cfg: Config, before: dict, after: dict, history: list, picture: str) -> dict:
    return {
        "steps": cfg.train.max_steps,
        "eval_mse_before": before["mse_depth"][-1],
        "eval_mse_after": after["mse_depth"][-1],
        "mse_reduction": before["mse_depth"][-1] / max(after["mse_depth"][-1], 1e-12),
        "mse_by_depth": after["mse_depth"],
        "codebook_usage": after["codebook_usage"],
        "train_recon_first_step": history[0]["g/recon"],
        "train_recon_last_step": history[-1]["g/recon"],
        "picture": picture,
    }
