"""The Contextual RQ-Transformer as a task (Draft-and-Revise, Sec. 3.2, Eqs. 10-11): frozen RQ-VAE ->
codes (soft labels and stochastic codes as in the AR task) -> a random set of masked positions ->
negative log-likelihood of the masked stacks' codes, all depths.

Masking (Eq. 10): per sample, r ~ U[0, 1) and ceil(gamma(r) N) of the N positions, chosen uniformly, are
masked, gamma(r) = cos(pi r / 2) (the "quarter-period of cosine", Sec. 4). Since r < 1, at least one
position is masked; r near 0 masks all of them, the draft phase's starting point.
The masks are drawn on the host from torch's CPU generator (checkpointed with each rank's RNG state),
so the number of masked stacks is known without a device sync and only they run through the depth
transformer and the head.
Loss (Eq. 11 is a sum over masked positions and depths): its mean over those codes, so the figure reads
like the AR model's per-code loss (Eq. 11 up to a factor that depends only on the drawn mask count).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from rqscale.tasks.stage2 import Stage2Task


def mask_counts(r: torch.Tensor, positions: int) -> torch.Tensor:
    """ceil(cos(pi r / 2) N) for r in [0, 1): how many positions each sample masks (Eq. 10)."""
    return torch.ceil(torch.cos(r * (math.pi / 2)) * positions).long().clamp_(1, positions)


def draw_masks(batch: int, positions: int, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked (B, N) bool, index (M,) of the masked rows b * N + n), on the host (Eq. 10)."""
    counts = mask_counts(torch.rand(batch, generator=generator), positions)
    order = torch.rand(batch, positions, generator=generator).argsort(dim=1)  # a uniform permutation per sample
    masked = torch.zeros(batch, positions, dtype=torch.bool)
    masked.scatter_(1, order, torch.arange(positions).expand(batch, -1) < counts.unsqueeze(1))
    return masked, masked.flatten().nonzero().squeeze(1)


class ContextualTask(Stage2Task):
    def losses(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict:
        probs, codes = self.targets(self.latents(batch), generator)
        b, n, d = codes.shape
        masked, index = draw_masks(b, n)  # the host's generator, whatever device trains
        masked, index = masked.to(codes.device, non_blocking=True), index.to(codes.device, non_blocking=True)
        cond, dropped = self.condition(batch)
        out = self.model(codes, masked, index, cond)
        targets = None if probs is None else probs.reshape(b * n, d, -1)[index]
        per_code = self.code_losses(out.logits, targets, codes.reshape(b * n, d)[index])  # (M, D)
        losses = self.named_losses(per_code, out, batch, dropped)
        losses["masked_fraction"] = masked.float().mean().detach()
        return losses
