"""Batched autoregressive sampling of RQ-Transformer codes.

With the KV cache, each new position costs one spatial token per layer, and each depth one depth
token; the depth cache is reset at every position. Without it (the baseline the benchmark compares
against), every step re-runs the whole prefix. Classifier-free guidance runs the conditional and
null-condition halves in one doubled batch: logits = l_null + s * (l_cond - l_null).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from rqscale.models import RQTransformer
from rqscale.sampling.filters import SamplingParams, sample_from_logits


def _guided(logits: torch.Tensor, scale: float, batch: int) -> torch.Tensor:
    if logits.shape[0] == batch:
        return logits
    cond, null = logits[:batch], logits[batch:]
    return null + scale * (cond - null)


def _with_null(model: RQTransformer, cond: Optional[torch.Tensor], guided: bool) -> Optional[torch.Tensor]:
    if not guided:
        return cond
    if model.cfg.condition == "none":
        raise ValueError("classifier-free guidance needs a conditional model")
    null = model.null_class if model.cfg.condition == "class" else 0  # as Stage2Task.condition
    return torch.cat([cond, torch.full_like(cond, null)])


@torch.no_grad()
def sample_codes(
    model: RQTransformer,
    batch: int,
    cond: Optional[torch.Tensor] = None,
    params: Optional[SamplingParams] = None,
    generator: Optional[torch.Generator] = None,
    use_cache: bool = True,
    on_logits: Optional[Callable[[int, int, torch.Tensor], None]] = None,
) -> torch.Tensor:
    """Codes (B, T, D). `on_logits(t, d, logits)` sees the (guided) logits of every step."""
    params = (params or SamplingParams()).resolve(model.depth_codes, model.num_codes)
    guided = params.cfg_scale != 1.0
    cond = _with_null(model, cond, guided)
    step = _cached_steps if use_cache else _recompute_steps
    return step(model, batch, cond, params, generator, on_logits)


def _pick(logits, t, d, batch, params, generator, on_logits) -> torch.Tensor:
    """Sample one code per image; under guidance both halves of the doubled batch get the same code."""
    rows = logits.shape[0]
    logits = _guided(logits, params.cfg_scale, batch)
    if on_logits is not None:
        on_logits(t, d, logits)
    code = sample_from_logits(logits, params.per_depth[d], generator)
    return code.repeat(rows // batch)


def _cached_steps(model, batch, cond, params, generator, on_logits):
    prefix = model.condition_tokens(batch if cond is None else cond.shape[0], cond)
    rows = prefix.shape[0]
    dtype, device = prefix.dtype, prefix.device
    spatial_cache = model.spatial.new_cache(rows, prefix.shape[1] + model.positions - 1, device, dtype)
    depth_cache = model.depth.new_cache(rows, model.depth_codes, device, dtype)
    codes = torch.empty(rows, model.positions, model.depth_codes, dtype=torch.long, device=device)
    context = model.spatial_step(prefix, spatial_cache)
    for t in range(model.positions):
        depth_cache.reset()
        token = (context + model.pos_depth[0]).unsqueeze(1)
        for d in range(model.depth_codes):
            logits = model.depth_step(token, depth_cache)
            codes[:, t, d] = _pick(logits, t, d, batch, params, generator, on_logits)
            if d + 1 < model.depth_codes:
                token = model.depth_token(codes[:, t, : d + 1])
        if t + 1 < model.positions:
            context = model.spatial_step(model.code_tokens(codes[:, t : t + 1], t), spatial_cache)
    return codes[:batch]


def _recompute_steps(model, batch, cond, params, generator, on_logits):
    """Baseline without any cache: the full spatial and depth prefixes are recomputed every step."""
    prefix = model.condition_tokens(batch if cond is None else cond.shape[0], cond)
    rows = prefix.shape[0]
    codes = torch.empty(rows, model.positions, model.depth_codes, dtype=torch.long, device=prefix.device)
    for t in range(model.positions):
        spatial_in = torch.cat([prefix, model.code_tokens(codes[:, :t], 0)], dim=1)
        context = model.spatial(spatial_in)[:, -1]
        for d in range(model.depth_codes):
            depth_in = model.depth_tokens(context, codes[:, t, :d])
            logits = model.head(model.depth(depth_in)[:, -1])
            codes[:, t, d] = _pick(logits, t, d, batch, params, generator, on_logits)
    return codes[:batch]
