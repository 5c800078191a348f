"""The training loop for one process: config -> stage runner -> metrics, summary and pictures.

No Ray and no argparse: `python -m rqscale.train` and the tests both call `run()`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterator

import torch

from rqscale.config import Config, ConfigError, save_resolved


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_dir_of(cfg: Config) -> str:
    return os.path.join(cfg.run.output_dir, cfg.run.name)


def check_runnable(cfg: Config) -> None:
    """What this single-process build cannot run yet, refused with the key to change."""
    if cfg.train.num_workers != 1:
        raise ConfigError("train.num_workers", f"{cfg.train.num_workers} workers need the distributed launcher, not in this build yet",
                          "set train.num_workers=1 and train.micro_batch x train.grad_accum = train.global_batch")
    if cfg.run.init_from and cfg.run.init_from.startswith("s3://"):
        raise ConfigError("run.init_from", "s3:// weights are not readable in this build yet", "copy the file locally and point run.init_from at it")
    if cfg.stage == "stage2" and cfg.stage2.model.condition == "text":
        raise ConfigError("stage2.model.condition", "text-conditional training is not part of this build yet", "use condition class or none")


def run(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Train cfg.stage for cfg.train.max_steps; return the summary (also written to summary.json)."""
    check_runnable(cfg)
    out_dir = run_dir_of(cfg)
    save_resolved(cfg, os.path.join(out_dir, "config.yaml"))
    torch.manual_seed(cfg.run.seed)
    device = resolve_device(cfg.train.device)
    if cfg.stage == "stage1":
        from rqscale.train.stage1 import run_stage1 as runner
    else:
        from rqscale.train.stage2 import run_stage2 as runner
    summary = runner(cfg, out_dir, device, log)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def train_steps(cfg: Config, step_fn: Callable[[list, int], dict], micro_batches: Iterator, out_dir: str,
                log: Callable[[str], None], keys: tuple) -> list:
    """Run cfg.train.max_steps optimizer steps of grad_accum micro-batches; log `keys`; write metrics.jsonl."""
    t = cfg.train
    history, start = [], time.perf_counter()
    with open(os.path.join(out_dir, "metrics.jsonl"), "w") as metrics_file:
        for step in range(t.max_steps):
            metrics = {"step": step, **step_fn([next(micro_batches) for _ in range(t.grad_accum)], step)}
            history.append(metrics)
            metrics_file.write(json.dumps(metrics) + "\n")
            if step % t.log_every == 0 or step == t.max_steps - 1:
                shown = "  ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)
                log(f"step {step:>6}  {shown}  {time.perf_counter() - start:.0f}s")
    return history
