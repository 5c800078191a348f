"""Averaging named losses over micro-batches into plain floats."""
from __future__ import annotations

import torch


def accumulate(metrics: dict, values: dict, n: int, prefix: str = "") -> None:
    """metrics[prefix + key] += value / n, for tensors or numbers."""
    for key, value in values.items():
        value = float(value.detach()) if torch.is_tensor(value) else float(value)
        metrics[prefix + key] = metrics.get(prefix + key, 0.0) + value / n
