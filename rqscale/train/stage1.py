"""One stage-1 optimisation step: generator (RQ-VAE) update, then discriminator update.

No Ray and no argparse here, so the step is testable on its own. The codebook is not a parameter:
it moves only through the quantizer's EMA inside the forward pass.
"""
from __future__ import annotations

from typing import Sequence

import torch

from rqscale.config.schema import Config
from rqscale.tasks import Stage1Task
from rqscale.train.optim import build_optimizer, build_scheduler


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
            _accumulate(metrics, losses, n, prefix="g/")
            _accumulate(metrics, {"batch_code_usage": codes.unique().numel() / self.task.rqvae.cfg.num_codes}, n)
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
            _accumulate(metrics, d_losses, n, prefix="d/")
        self._clip_and_step(self.opt_d, self.sched_d, self.task.discriminator_parameters())

    def _clip_and_step(self, optimizer, scheduler, params) -> None:
        if self.cfg.stage1.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.stage1.optim.grad_clip)
        optimizer.step()
        scheduler.step()


def _accumulate(metrics: dict, values: dict, n: int, prefix: str = "") -> None:
    for key, value in values.items():
        value = float(value.detach()) if torch.is_tensor(value) else float(value)
        metrics[prefix + key] = metrics.get(prefix + key, 0.0) + value / n
