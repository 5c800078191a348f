"""Stage 2 in plain PyTorch: the reference step (AdamW on the RQ-Transformer, the RQ-VAE frozen; A.3)
that the DeepSpeed path (stage2_engine.py) is tested and benchmarked against, and shared helpers."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from rqscale.config import Config
from rqscale.models import RQVAE
from rqscale.sampling import SamplingParams, sample_codes
from rqscale.tasks import Stage2Task
from rqscale.train.metrics import accumulate
from rqscale.train.optim import build_optimizer, build_scheduler
from rqscale.train.stage1 import load_init_weights
from rqscale.utils.images import save_grid


def decay_groups(model: nn.Module, weight_decay: float) -> list:
    """Weight decay on Linear weights only; biases, LayerNorms, embeddings and position tables
    are not decayed (the minGPT convention the ref's transformer follows)."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0},
    ]


class Stage2Trainer:
    def __init__(self, task: Stage2Task, cfg: Config):
        self.task, self.optim_cfg = task, cfg.stage2.optim
        self.optimizer = build_optimizer(decay_groups(task.model, self.optim_cfg.weight_decay), self.optim_cfg)
        self.scheduler = build_scheduler(self.optimizer, self.optim_cfg, cfg.train.max_steps)

    def step(self, micro_batches: Sequence[dict], step: int) -> dict:
        self.task.train()
        n = len(micro_batches)
        metrics: dict = {}
        self.optimizer.zero_grad(set_to_none=True)
        for batch in micro_batches:
            losses = self.task.losses(batch)
            (losses["total"] / n).backward()
            accumulate(metrics, losses, n)
        if self.optim_cfg.grad_clip > 0:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.task.trainable_parameters(), self.optim_cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        return metrics


# ---- the stage-2 run: frozen RQ-VAE, training, a consolidated checkpoint, samples --------------

def load_rqvae(cfg: Config) -> RQVAE:
    model = RQVAE(cfg.rqvae)
    load_init_weights(model, cfg.stage2.rqvae_checkpoint, "stage2.rqvae_checkpoint")
    return model


@torch.no_grad()
def sample_picture(task: Stage2Task, path: str, seed: int, per_row: int = 8) -> str:
    """One row of samples per class (up to 10 classes), or 4 rows for an unconditional model."""
    model = task.model.eval()
    device = next(model.parameters()).device
    conditional = model.cfg.condition == "class"
    rows = []
    for row in range(min(10, model.cfg.num_classes) if conditional else 4):
        cond = torch.full((per_row,), row, device=device) if conditional else None
        codes = sample_codes(model, per_row, cond, SamplingParams(), torch.Generator(device=device).manual_seed(seed + row))
        rows.append(task.rqvae.decode_codes(codes.view(per_row, *task.cfg.rqvae.code_shape)))
    model.train()
    return save_grid(rows, path, scale=max(1, 64 // rows[0].shape[-1]))
