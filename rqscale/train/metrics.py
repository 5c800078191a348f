"""Averaging named losses over micro-batches, kept on the device.

Values stay tensors (detached, fp32) so that a step never waits for the device; the worker stacks
them, reduces them over ranks and converts them to numbers once per logging step."""
from __future__ import annotations

import torch


def accumulate(metrics: dict, values: dict, n: int, prefix: str = "") -> None:
    """metrics[prefix + key] += value / n: tensors stay on their device, numbers stay numbers."""
    for key, value in values.items():
        value = value.detach().float() if torch.is_tensor(value) else float(value)
        previous = metrics.get(prefix + key)
        metrics[prefix + key] = value / n if previous is None else previous + value / n
