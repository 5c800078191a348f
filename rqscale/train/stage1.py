"""Stage 1: one optimisation step (generator, then discriminator) and the run around it.

No Ray and no argparse here, so the step is testable on its own. The codebook is not a parameter:
it moves only through the quantizer's EMA inside the forward pass.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch

from rqscale.config import Config, ConfigError
from rqscale.data.pipeline import eval_images, micro_batches
from rqscale.eval import coarse_to_fine
from rqscale.tasks import Stage1Task
from rqscale.train.loop import train_steps
from rqscale.train.metrics import accumulate
from rqscale.train.optim import build_optimizer, build_scheduler
from rqscale.utils.images import save_grid


class Stage1Trainer:
    def __init__(self, task: Stage1Task, cfg: Config):
        self.task, self.cfg = task, cfg
        total = cfg.train.max_steps
        self.opt_g = build_optimizer(task.generator_parameters(), cfg.stage1.optim)
        self.opt_d = build_optimizer(task.discriminator_parameters(), cfg.stage1.optim, lr=cfg.stage1.optim.disc_lr)
        self.sched_g = build_scheduler(self.opt_g, cfg.stage1.optim, total)
        self.sched_d = build_scheduler(self.opt_d, cfg.stage1.optim, total)

    def step(self, micro_batches: Sequence[torch.Tensor], step: int) -> dict:
        """Accumulate over the micro-batches, then step both optimizers. Returns float metrics."""
        self.task.train()
        n = len(micro_batches)
        metrics: dict = {}
        recons = []
        self.opt_g.zero_grad(set_to_none=True)
        for images in micro_batches:
            losses = self.task.generator_losses(images, step)
            (losses["total"] / n).backward()
            recons.append(losses.pop("reconstruction"))
            codes = losses.pop("codes")
            accumulate(metrics, losses, n, prefix="g/")
            accumulate(metrics, {"batch_code_usage": codes.unique().numel() / self.task.rqvae.cfg.num_codes}, n)
        self._clip_and_step(self.opt_g, self.sched_g, self.task.generator_parameters())
        if self.task.disc_active(step):
            self._discriminator_step(micro_batches, recons, metrics)
        metrics["lr"] = self.sched_g.get_last_lr()[0]
        return metrics

    def _discriminator_step(self, micro_batches, recons, metrics: dict) -> None:
        n = len(micro_batches)
        self.opt_d.zero_grad(set_to_none=True)
        for images, recon in zip(micro_batches, recons):
            d_losses = self.task.discriminator_losses(images, recon)
            (d_losses["total"] / n).backward()
            accumulate(metrics, d_losses, n, prefix="d/")
        self._clip_and_step(self.opt_d, self.sched_d, self.task.discriminator_parameters())

    def _clip_and_step(self, optimizer, scheduler, params) -> None:
        if self.cfg.stage1.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.stage1.optim.grad_clip)
        optimizer.step()
        scheduler.step()



# ---- the stage-1 run: data, training, evaluation, pictures -------------------------------------

def load_init_weights(module: torch.nn.Module, path: str, key: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(key, f"'{path}' does not match this RQ-VAE (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          "use a checkpoint trained with the same rqvae.* settings")


def run_stage1(cfg: Config, out_dir: str, device: torch.device, log) -> dict:
    held_out = eval_images(cfg)
    task = Stage1Task(cfg)
    if cfg.run.init_from:
        load_init_weights(task.rqvae, cfg.run.init_from, "run.init_from")
    task = task.to(device)
    trainer = Stage1Trainer(task, cfg)
    held_out = held_out.to(device)
    before = coarse_to_fine(task.rqvae, held_out)
    stream = (_images(batch).to(device) for batch in micro_batches(cfg))
    history = train_steps(cfg, trainer.step, stream, out_dir, log, ("g/recon", "g/commit", "g/lpips", "batch_code_usage"))
    after = coarse_to_fine(task.rqvae, held_out)
    picture = _reconstruction_picture(task.rqvae, held_out[:8], os.path.join(out_dir, "reconstructions.png"))
    torch.save(task.rqvae.state_dict(), os.path.join(out_dir, "rqvae.pt"))
    return {
        "stage": "stage1",
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


def _images(batch: dict) -> torch.Tensor:
    if "images" not in batch:
        raise ConfigError("data.shards", "stage 1 trains on images, and these shards hold latents", "point data.shards at image shards")
    return batch["images"]


@torch.no_grad()
def _reconstruction_picture(model, images: torch.Tensor, path: str) -> str:
    """Originals, then G(Z^(d)) for d = 1..D: the coarse-to-fine rows of Fig. 5."""
    model.eval()
    codes = model.encode(images)
    rows = [images] + [model.decode_codes(codes, depth=d) for d in range(1, model.cfg.code_shape[2] + 1)]
    model.train()
    return save_grid(rows, path, scale=max(1, 128 // images.shape[-1]))
