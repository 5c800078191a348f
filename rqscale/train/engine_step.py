"""One optimizer step through a DeepSpeed engine, with non-finite losses skipped on every rank.

DeepSpeed skips steps only for fp16 overflow. Here each micro-batch's loss is checked on all ranks
(one scalar all-reduce): a non-finite one is not backpropagated (its NaNs would reach every
gradient), a detached zero takes its place so DeepSpeed's accumulation count stays aligned, and the
step's learning rate is set to 0 so no weight moves. The caller counts the skip.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.distributed as dist

from rqscale.train.metrics import accumulate


def all_finite(value: torch.Tensor) -> bool:
    """True when `value` is finite on every rank."""
    flag = torch.tensor([1.0 if bool(torch.isfinite(value.detach()).all()) else 0.0])
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def engine_step(engine, micro_batches: Sequence, losses_of: Callable, metrics: dict, prefix: str = "") -> bool:
    """Forward/backward every micro-batch through `engine`, then step. Returns False if skipped."""
    n, finite = len(micro_batches), True
    for batch in micro_batches:
        losses = losses_of(batch)
        total = losses.pop("total")
        if all_finite(total):
            engine.backward(total)
        else:
            finite = False
            engine.backward(torch.zeros((), requires_grad=True) * 1.0)  # DeepSpeed wants a grad_fn
        accumulate(metrics, {k: v for k, v in losses.items() if not torch.is_tensor(v) or v.dim() == 0}, n, prefix)
        accumulate(metrics, {"total": total}, n, prefix)
        if not finite:
            _zero_learning_rate(engine)
        engine.step()
    return finite


def _zero_learning_rate(engine) -> None:
    for group in engine.optimizer.param_groups:
        group["lr"] = 0.0  # the scheduler sets the next step's rate again after this step
