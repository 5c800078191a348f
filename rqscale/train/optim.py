"""Optimizers and learning-rate schedules from the typed config (A.3)."""
from __future__ import annotations

import math

import torch

from rqscale.config.schema import OptimConfig


def build_optimizer(params, cfg: OptimConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam (stage 1) or AdamW (stage 2), A.3. Fused: one kernel per parameter group on GPU and CPU,
    and the only torch implementation that reads `found_inf` (see skip_step_if_nonfinite)."""
    kwargs = dict(lr=cfg.lr if lr is None else lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                  fused=True)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    return torch.optim.Adam(params, **kwargs)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant (stage 1, A.3) or cosine to 0 (stage 2, A.3)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))


def skip_step_if_nonfinite(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """Make the next `optimizer.step()` a no-op on the device when `finite` (0-dim, 1.0 or 0.0) is 0.

    torch's fused Adam/AdamW take the optimizer's `found_inf` attribute (what GradScaler sets) and skip
    the whole update where it is non-zero: parameters, both moments and the step count stay as they
    were. No host sync: the flag never leaves the device, except when the optimizer's state lives on
    the CPU (ZeRO-Offload), whose CPU kernel reads the flag at once: then it is copied back blocking,
    since torch's own non-blocking copy would race that read."""
    found_inf = (1.0 - finite.detach().float()).reshape(())
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if params and params[0].device.type != found_inf.device.type:
        found_inf = found_inf.to(params[0].device)  # blocking: see above
    optimizer.found_inf = found_inf
