"""Collectives the codebook EMA needs, passed in so one process and N processes run the same code.

The quantizer only ever calls `all_reduce_sum` and `broadcast`; which implementation backs them is
the caller's choice. `LocalCollective` is the identity (one process). `TorchDistCollective` uses
torch.distributed on an optional process group, and falls back to local behaviour when no process
group is initialised, which is what a model built before `init_process_group` needs.
"""
from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.distributed as dist


class Collective(Protocol):
    def all_reduce_sum(self, tensor: torch.Tensor) -> None: ...

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None: ...


class LocalCollective:
    """Single process: sums over one rank are the tensor itself."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        return None

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        return None


class TorchDistCollective:
    """torch.distributed on `group` (None = world), a no-op when not initialised."""

    def __init__(self, group: Optional[object] = None):
        self.group = group

    def _active(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        if self._active():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        if self._active():
            dist.broadcast(tensor, src=src, group=self.group)
