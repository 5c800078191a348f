"""Collectives the codebook EMA needs, passed in so one process and N processes run the same code.

The quantizer only ever calls `all_reduce_sum` and `broadcast`; which implementation backs them is
the caller's choice. `LocalCollective` is the identity (one process). On a process group the trainer
passes `rqscale.utils.collectives.DeviceCollectives(engine device)`, which checks that every tensor is
on that device; a quantizer built on its own gets one that accepts any device (and is the identity
when no process group is initialised).
"""
from __future__ import annotations

from typing import Protocol

import torch


class Collective(Protocol):
    def all_reduce_sum(self, tensor: torch.Tensor) -> None: ...

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None: ...


class LocalCollective:
    """Single process: sums over one rank are the tensor itself."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        return None

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        return None


def default_collective() -> Collective:
    from rqscale.utils.collectives import DeviceCollectives

    return DeviceCollectives(device=None)
