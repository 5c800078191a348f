"""The metrics of the steps since the last logging step, kept on the device until then.

torchtitan's pattern: a step's losses and metrics are device tensors; they are all-reduced and read
back to the host once per `train.log_every` steps (and at checkpoints), as one flat tensor, so a
non-logging step never waits for the device. Each step still gets its own record in metrics.jsonl.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from rqscale.utils.collectives import DeviceCollectives


@dataclass
class PendingStep:
    step: int
    metrics: dict  # name -> 0-dim device tensor or a plain number (e.g. the learning rate)
    wall_time: float  # time.time() when the step's work was queued (recovery timing)


@dataclass
class MetricWindow:
    device: torch.device
    steps: list = field(default_factory=list)
    summed: tuple = ()  # host counts (ints) summed over ranks instead of averaged, e.g. skipped samples
    opened: float = field(default_factory=time.perf_counter)

    def add(self, step: int, metrics: dict) -> None:
        self.steps.append(PendingStep(step, metrics, time.time()))

    def reduce(self, collectives: DeviceCollectives) -> tuple:
        """([{"step", **metrics as numbers, "wall_time"}] with tensors averaged over ranks and the host
        counts named in `summed` added up over ranks, seconds per step over the window). One all-reduce
        and one read-back for the whole window; then the window is empty. Every rank holds the same
        names at the same steps, so the flat layouts agree."""
        means = [(i, k) for i, p in enumerate(self.steps) for k, v in p.metrics.items() if torch.is_tensor(v)]
        sums = [(i, k) for i, p in enumerate(self.steps) for k in self.summed if k in p.metrics]
        numbers = self._all_reduced(collectives, means, sums)
        records = [{"step": p.step, **{k: v for k, v in p.metrics.items() if not torch.is_tensor(v)}} for p in self.steps]
        for (i, key), number in zip(means + sums, numbers):
            records[i][key] = int(round(number)) if key in self.summed else number
        for record, pending in zip(records, self.steps):
            record["wall_time"] = pending.wall_time
        seconds = (time.perf_counter() - self.opened) / max(1, len(self.steps))
        self.steps, self.opened = [], time.perf_counter()
        return records, seconds

    def _all_reduced(self, collectives: DeviceCollectives, means: list, sums: list) -> list:
        if not means and not sums:
            return []
        values = [self.steps[i].metrics[k].detach().reshape(()).to(self.device, torch.float32) for i, k in means]
        counts = torch.tensor([float(self.steps[i].metrics[k]) for i, k in sums], device=self.device)
        flat = torch.cat([torch.stack(values) if values else counts[:0], counts])  # a host-to-device copy here is fine: we sync next
        collectives.all_reduce_sum(flat)
        flat[: len(values)] /= collectives.world_size
        return flat.tolist()  # the window's one host sync
