"""Per-depth sampling controls: temperature, then top-k, then top-p (nucleus), as in the ref sampler."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Union

import torch

PerDepth = Union[float, int, None, Sequence]


def _per_depth(value, depth: int, name: str) -> list:
    """One value per depth: a sequence of D values, or one value (alone or in a 1-sequence) for all."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (list, tuple)):
        if len(value) != depth:
            raise ValueError(f"{name} has {len(value)} values but the model has D={depth} depths: give one value or {depth}")
        return list(value)
    return [value] * depth


@dataclass
class SamplingParams:
    temperature: PerDepth = 1.0
    top_k: PerDepth = None  # None or 0: no top-k
    top_p: PerDepth = None  # None or 1.0: no top-p
    cfg_scale: float = 1.0  # 1.0: no classifier-free guidance
    per_depth: List[tuple] = field(default_factory=list, init=False)

    def resolve(self, depth: int, num_codes: int) -> "SamplingParams":
        """A copy expanded to one (temperature, top_k, top_p) per depth, every value checked. A copy, so
        one SamplingParams (e.g. a SampleRequest's) serves models of any depth."""
        temps = _per_depth(self.temperature, depth, "temperature")
        ks = _per_depth(self.top_k, depth, "top_k")
        ps = _per_depth(self.top_p, depth, "top_p")
        for t, k, p in zip(temps, ks, ps):
            if not t > 0:
                raise ValueError(f"temperature must be > 0, got {t}")
            if k is not None and not 0 <= int(k) <= num_codes:
                raise ValueError(f"top_k must be in [0, K={num_codes}], got {k}")
            if p is not None and not 0.0 < float(p) <= 1.0:
                raise ValueError(f"top_p must be in (0, 1], got {p}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        resolved = replace(self)
        resolved.per_depth = list(zip(temps, ks, ps))
        return resolved


def filter_logits(logits: torch.Tensor, temperature: float, top_k: Optional[int], top_p: Optional[float]) -> torch.Tensor:
    """Logits (B, K) -> logits with excluded codes at -inf."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_from_logits(logits: torch.Tensor, setting: tuple, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    temperature, top_k, top_p = setting
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
