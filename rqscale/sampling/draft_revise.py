"""Draft-and-Revise decoding of a Contextual RQ-Transformer (NeurIPS 2022, Sec. 3.3, Algorithms 1-2).

A partition splits the N positions into T groups of equal size, uniformly at random (Eq. 12).
UPDATE(S, partition) (Algorithm 1) resamples the groups one after another: group t's stacks are hidden
([MASK], Eq. 4) while every other position shows its latest codes, and each of its stacks is sampled
over depth autoregressively (depth KV cache), all of the group's positions in parallel.
  draft:  S = UPDATE(all [MASK], partition into T_draft groups)     temperature 1, no guidance (A.4)
  revise: M times S = UPDATE(S, a fresh partition into T_revise)    temperature 0.8 + guidance (A.4)
Inpainting (supplement D.3): the partitions cover only the region to fill; known codes never change.
For supplement Table 3's comparison the draft can instead pick each step's positions by confidence
(rqscale/sampling/confidence.py: "top-c", "top-c-50"); the revise phase is always random.

Partitions are drawn on the host, so the rows of each group are known without a device sync.
Guidance doubles the batch with the null condition (logits = l_null + s (l_cond - l_null)), as the AR
sampler does (rqscale/sampling/sampler.py), whose code picking this module shares.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from rqscale.config.validate import DRAFT_STRATEGIES
from rqscale.models import ContextualRQTransformer
from rqscale.sampling.filters import SamplingParams, filter_logits
from rqscale.sampling.sampler import _pick, _with_null


@dataclass
class DraftRevise:
    """Defaults: the ImageNet 821M model's (Sec. 4.1, supplement A.4); the per-model values live in configs."""

    draft_steps: int = 64  # T_draft
    revise_steps: int = 2  # T_revise
    revise_iterations: int = 2  # M
    draft: SamplingParams = field(default_factory=SamplingParams)  # A.4: no temperature, no guidance
    revise: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.8, cfg_scale=1.8))
    draft_strategy: str = "random"  # Eq. 12; or "top-c" / "top-c-50" (supplement Table 3)


def balanced_partition(region: torch.Tensor, groups: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Eq. 12 on the host: (B, N) group index in 0..groups-1 of each position in `region` (B, N) bool, -1
    outside it. Each sample's region positions are permuted uniformly and dealt into `groups` parts whose
    sizes differ by at most one (equal when `groups` divides the region, as every T of the paper does)."""
    region = region.cpu()
    count = region.sum(dim=1, keepdim=True)
    if int(count.min()) < groups:
        raise ValueError(f"cannot split {int(count.min())} positions into {groups} groups")
    keys = torch.rand(region.shape, generator=generator).masked_fill_(~region, 2.0)  # outside the region: last
    rank = torch.empty_like(region, dtype=torch.long).scatter_(1, keys.argsort(dim=1), torch.arange(region.shape[1]).expand_as(keys))
    return torch.where(region, rank * groups // count, torch.full_like(rank, -1))


@torch.no_grad()
def update(model: ContextualRQTransformer, codes: torch.Tensor, blank: torch.Tensor, partition: torch.Tensor, groups: int,
           cond: Optional[torch.Tensor], params: SamplingParams, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Algorithm 1, in place on codes (B, N, D); blank (B, N) bool: positions still all [MASK] (they stay
    hidden until their group is sampled). partition: (B, N) host tensor from balanced_partition."""
    params = params.resolve(model.depth_codes, model.num_codes)
    batch, n = codes.shape[:2]
    guided = params.cfg_scale != 1.0
    cond = _with_null(model, cond, guided)
    copies = 2 if guided else 1
    for t in range(groups):
        group = partition == t
        rows = group.flatten().nonzero().squeeze(1)  # host: a group's rows, known without a device sync
        rows = torch.cat([rows + i * batch * n for i in range(copies)]).to(codes.device)
        hidden = group.to(codes.device) | blank
        h, _ = model.context(codes.repeat(copies, 1, 1), hidden.repeat(copies, 1), cond)
        stacks = sample_stacks(model, h.reshape(copies * batch * n, -1)[rows], params, len(rows) // copies, generator)
        codes.view(batch * n, -1)[rows[: len(rows) // copies]] = stacks
        blank &= ~group.to(blank.device)
    return codes


def sample_stacks(model: ContextualRQTransformer, context: torch.Tensor, params: SamplingParams, batch: int,
                  generator: Optional[torch.Generator] = None, log_probs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(batch, D) codes, each stack autoregressive over depth from its spatial output (Eqs. 8-9);
    `context` holds the guided rows' null half after the conditional one. params: resolved. `log_probs`
    (batch,), if given, receives each stack's log-probability: the sum over depth of its sampled codes'
    log-probabilities under the distributions they were drawn from (the confidence of rqscale's Top-C)."""
    rows = context.shape[0]
    cache = model.depth.new_cache(rows, model.depth_codes, context.device, context.dtype)
    stacks = torch.empty(rows, model.depth_codes, dtype=torch.long, device=context.device)
    token = (context + model.pos_depth[0]).unsqueeze(1)
    seen = []  # the (guided) logits each depth's codes are drawn from, when log_probs is wanted
    keep = None if log_probs is None else (lambda t, d, logits: seen.append(logits))
    for d in range(model.depth_codes):
        stacks[:, d] = _pick(model.depth_step(token, cache), 0, d, batch, params, generator, keep)
        if log_probs is not None:
            drawn_from = filter_logits(seen.pop(), *params.per_depth[d]).log_softmax(dim=-1)
            log_probs += drawn_from.gather(1, stacks[:batch, d : d + 1]).squeeze(1)
        if d + 1 < model.depth_codes:
            token = model.depth_token(stacks[:, : d + 1])
    return stacks[:batch]


@torch.no_grad()
def draft_and_revise(model: ContextualRQTransformer, batch: int, cond: Optional[torch.Tensor] = None,
                     schedule: Optional[DraftRevise] = None, generator: Optional[torch.Generator] = None,
                     known: Optional[torch.Tensor] = None, region: Optional[torch.Tensor] = None,
                     keep_draft: bool = False):
    """Algorithm 2: codes (B, N, D), and the drafts too if keep_draft. Inpainting: `known` codes (B, N, D)
    and the `region` (B, N) bool to fill; elsewhere the known codes stay."""
    schedule = schedule or DraftRevise()
    if schedule.draft_strategy not in DRAFT_STRATEGIES:
        raise ValueError(f"unknown draft strategy '{schedule.draft_strategy}': use one of {', '.join(DRAFT_STRATEGIES)}")
    device = model.pos_spatial.device
    n, d = model.positions, model.depth_codes
    region = torch.ones(batch, n, dtype=torch.bool) if region is None else region.cpu()
    codes = torch.zeros(batch, n, d, dtype=torch.long, device=device) if known is None else known.clone().to(device)
    blank = region.to(device).clone()  # the draft starts from all [MASK] (in the region)
    if schedule.draft_strategy == "random":
        partition = balanced_partition(region, schedule.draft_steps, _host(generator))
        update(model, codes, blank, partition, schedule.draft_steps, cond, schedule.draft, generator)
    else:
        from rqscale.sampling.confidence import confident_draft

        confident_draft(model, codes, blank, region, schedule, cond, generator)
    draft = codes.clone() if keep_draft else None
    for _ in range(schedule.revise_iterations):
        partition = balanced_partition(region, schedule.revise_steps, _host(generator))
        update(model, codes, blank, partition, schedule.revise_steps, cond, schedule.revise, generator)
    return (codes, draft) if keep_draft else codes


def _host(generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    """The partitions' generator: the sampling generator when it is a CPU one, else a CPU generator
    seeded from it, so that a seed fixes the partitions on any device."""
    if generator is None or generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(generator.initial_seed())
