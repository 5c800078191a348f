"""Every collective rqscale itself issues goes through `DeviceCollectives`, given the engine's device.

Why one helper: gloo on CPU reduces tensors wherever they live, NCCL on a GPU cannot reduce a CPU
tensor at all. A collective fed `torch.tensor([...])` (a CPU tensor from the default device) passes
every CPU test and fails on the first GPU step. Here every tensor a collective sees is checked to be
on the device the helper was built for, and every tensor the helper makes itself is made there, so
the mistake fails on CPU too (tests/distributed/test_step_discipline.py intercepts torch.distributed
during real steps and requires that rqscale's collectives all came through this module).

Process group: the one Ray Train (or `rqscale.engine.init_distributed`) set up: NCCL on GPUs, gloo
on CPUs. Nothing in the training step needs a host-side reduction, so no extra gloo group is made.
With no process group (or one rank) every method is the identity.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist


class CollectiveDeviceError(RuntimeError):
    """A collective was handed a tensor on another device than the engine's."""


def same_device(a: torch.device, b: torch.device) -> bool:
    """cuda and cuda:0 name one device when the current device is 0."""
    if a.type != b.type:
        return False
    index = lambda d: d.index if d.index is not None or d.type != "cuda" else torch.cuda.current_device()  # noqa: E731
    return index(a) == index(b)


class DeviceCollectives:
    """Collectives on tensors of `device` through `group` (None: the default group).

    `device=None` accepts tensors on any device: only for code used outside the trainer (a quantizer
    built on its own); the trainer always passes the engine's device."""

    def __init__(self, device: Optional[torch.device], group: Optional[Any] = None):
        self.device = None if device is None else torch.device(device)
        self.group = group

    # ---- facts -------------------------------------------------------------------------------
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size(self.group) > 1

    @property
    def world_size(self) -> int:
        return dist.get_world_size(self.group) if dist.is_available() and dist.is_initialized() else 1

    def tensor(self, values: Sequence[float] | float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor on the helper's device (never the default device)."""
        return torch.tensor(values, dtype=dtype, device=self._require_device())

    # ---- collectives -------------------------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> None:
        """In place: the sum over ranks (the quantizer's Collective protocol)."""
        self._all_reduce(tensor, dist.ReduceOp.SUM)

    def all_reduce_min(self, tensor: torch.Tensor) -> None:
        self._all_reduce(tensor, dist.ReduceOp.MIN)

    def all_reduce_mean(self, tensor: torch.Tensor) -> None:
        """In place: the mean over ranks (SUM then divide: AVG is NCCL-only)."""
        self._all_reduce(tensor, dist.ReduceOp.SUM)
        if self.active():
            tensor.div_(self.world_size)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> None:
        self._check(tensor)
        if self.active():
            dist.broadcast(tensor, src=src, group=self.group)

    def broadcast_object(self, value: Any, src: int = 0) -> Any:
        """`value` from rank `src` on every rank (pickled; staged through the helper's device)."""
        if not self.active():
            return value
        box = [value]
        dist.broadcast_object_list(box, src=src, group=self.group, device=self._require_device())
        return box[0]

    def all_gather_object(self, value: Any) -> list:
        """Every rank's `value`, in rank order, on every rank (pickled; staged through the helper's device)."""
        if not self.active():
            return [value]
        self._require_device()  # all_gather_object stages through torch.cuda.current_device(), set by the loop
        box = [None] * self.world_size
        dist.all_gather_object(box, value, group=self.group)
        return box

    def barrier(self) -> None:
        if not self.active():
            return
        device = self._require_device()
        if device.type == "cuda":  # NCCL's barrier otherwise guesses a device from the rank
            dist.barrier(group=self.group, device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
        else:
            dist.barrier(group=self.group)

    # ---- checks ------------------------------------------------------------------------------
    def _all_reduce(self, tensor: torch.Tensor, op) -> None:
        self._check(tensor)
        if self.active():
            dist.all_reduce(tensor, op=op, group=self.group)

    def _check(self, tensor: torch.Tensor) -> None:
        if self.device is not None and not same_device(tensor.device, self.device):
            raise CollectiveDeviceError(
                f"a collective got a tensor on {tensor.device}, but the engine runs on {self.device}: "
                "make the tensor on the engine's device (NCCL cannot reduce host tensors)")

    def _require_device(self) -> torch.device:
        if self.device is None:
            raise CollectiveDeviceError("this collective needs the engine's device: build DeviceCollectives(device)")
        return self.device
