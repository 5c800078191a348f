"""One optimizer step through a DeepSpeed engine, with non-finite losses skipped on every rank,
decided on the device: no host sync in the step.

Every micro-batch is backpropagated. Whether all of this step's losses were finite on every rank is
one device flag (a MIN all-reduce over ranks through the collectives helper); the optimizer reads it
as `found_inf` (torch's fused Adam/AdamW skip their whole update, moments and step count included,
when it is set; rqscale/train/optim.py). So a NaN/inf loss anywhere moves no weight, yet the host
never waits for the device to learn the outcome. DeepSpeed's ZeRO-3 with bf16 does no overflow check
of its own, and its clipping multiplies the (then non-finite) gradients on the device too.

Losses and metrics stay device tensors (rqscale/train/metrics.py); the worker turns them into numbers
on logging steps only, and counts skipped steps from the flag returned here.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from rqscale.train.metrics import accumulate
from rqscale.train.optim import skip_step_if_nonfinite
from rqscale.utils.collectives import DeviceCollectives


def engine_step(engine, optimizer: torch.optim.Optimizer, micro_batches: Sequence, losses_of: Callable,
                metrics: dict, collectives: DeviceCollectives, prefix: str = "",
                finite_so_far: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Forward/backward every micro-batch through `engine`, then step (skipped on every rank when any
    loss was non-finite, or `finite_so_far` is 0). `optimizer` is the client optimizer DeepSpeed
    wraps. Returns a 0-dim float device tensor: 1.0 if the step was taken, 0.0 if skipped."""
    n, finite = len(micro_batches), (None if finite_so_far is None else finite_so_far > 0)
    for i, batch in enumerate(micro_batches):
        losses = losses_of(batch)
        total = losses.pop("total")
        ok = torch.isfinite(total.detach()).all()
        finite = ok if finite is None else finite & ok
        engine.backward(total)
        accumulate(metrics, {k: v for k, v in losses.items() if not torch.is_tensor(v) or v.dim() == 0}, n, prefix)
        accumulate(metrics, {"total": total}, n, prefix)
        if i == n - 1:  # DeepSpeed steps the optimizer at the accumulation boundary: the last call
            finite = _all_ranks(finite, collectives)
            skip_step_if_nonfinite(optimizer, finite)
        engine.step()
    return finite


def _all_ranks(finite: torch.Tensor, collectives: DeviceCollectives) -> torch.Tensor:
    flag = finite.to(torch.float32).reshape(1)
    collectives.all_reduce_min(flag)
    return flag.reshape(())
