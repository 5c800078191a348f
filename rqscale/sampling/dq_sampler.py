"""Coarse-to-fine sampling of DQ-Transformer sequences, all samples of a batch in lockstep: token i of
every sample is fed at step i, so one KV cache per stack serves them although each sample changes
segment at its own step.

Each step feeds token i to the Position-Transformer, picks position i+1, feeds h_i + e_pos(p_{i+1}) to
the Content-Transformer and picks content i+1. Positions are sampled in the coarse segment only:
  - coarse: a region after the last one chosen (raster order, as every training sequence runs), or EOS;
  - after the coarse EOS: the fine SOS, forced;
  - fine: the next map position outside the chosen coarse regions, in raster order, then EOS, forced
    (R's "fixed" fine mode);
  - after the fine EOS: pads until the batch ends.
So no position repeats, no fine code falls in a coarse region, and every sequence decodes. R's default
instead samples fine positions among the uncovered ones with EOS allowed at any step, which can leave
map positions without a code, and it masks coarse position 255 (R's range check starts one early), so
its bottom-right region is always fine; both are not copied. Contents are sampled (temperature, top-k,
top-p) where the position is a real one; at EOS / SOS they are the EOS / SOS the model was trained on.

`use_cache=False` recomputes both stacks over the whole prefix at every step: R's way, the benchmark's
baseline. The paper uses no classifier-free guidance, and neither does this sampler.
"""
from __future__ import annotations

from typing import Optional

import torch

from rqscale.data.dq_sequence import COARSE, FINE, Sequences, to_codes
from rqscale.models.dqtransformer import DQTransformer, Tokens
from rqscale.sampling.filters import SamplingParams, sample_from_logits

_CHECK_DONE_EVERY = 8  # steps between host reads of "every sample has ended"
_PLAIN = (1.0, None, None)  # positions: temperature 1, no filtering (R's script: top-k 1024 of 1027, top-p 1)


class _State:
    """The sequences written so far (B, L) and the per-sample bookkeeping the masks need."""

    def __init__(self, model: DQTransformer, batch: int, device):
        lay = self.layout = model.layout
        shape = (batch, lay.max_length)
        self.content = torch.full(shape, lay.pad("content"), dtype=torch.long, device=device)
        self.position = torch.full(shape, lay.pad("fine"), dtype=torch.long, device=device)
        self.segment = torch.full(shape, FINE, dtype=torch.long, device=device)
        self.content[:, 0], self.position[:, 0], self.segment[:, 0] = lay.sos("content"), lay.sos("coarse"), COARSE
        self.coarse_chosen = torch.zeros(batch, lay.regions, dtype=torch.bool, device=device)
        self.index = torch.arange(lay.max_length, device=device)

    def sequences(self) -> Sequences:
        length = (self.content != self.layout.pad("content")).sum(1)
        return Sequences(self.content, self.position, self.segment, length)

    def covered(self) -> torch.Tensor:
        """(B, P) map positions inside chosen coarse regions."""
        b, lay = self.coarse_chosen.shape[0], self.layout
        grid = self.coarse_chosen.view(b, lay.regions_h, lay.regions_w)
        return grid.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(b, -1)


def _next_position(state: _State, i: int, logits: torch.Tensor, generator) -> torch.Tensor:
    """Position i+1 of every sample: sampled in the coarse segment, forced elsewhere (module docstring)."""
    lay, p, s = state.layout, state.position[:, i], state.segment[:, i]
    in_coarse = (s == COARSE) & (p != lay.eos("coarse"))
    last = torch.where(p == lay.sos("coarse"), -1, p)
    ids = torch.arange(logits.shape[-1], device=logits.device)
    allowed = ((ids < lay.regions) & (ids > last.unsqueeze(1))) | (ids == lay.eos("coarse"))
    sampled = sample_from_logits(logits.float().masked_fill(~allowed, float("-inf")), _PLAIN, generator)
    after = torch.where(p >= lay.map_positions, -1, p)  # from the fine SOS: the first free position
    free = ~state.covered() & (torch.arange(lay.map_positions, device=logits.device) > after.unsqueeze(1))
    fine_next = torch.where(free.any(1), free.float().argmax(1), lay.eos("fine"))
    forced = torch.where((s == COARSE), lay.sos("fine"), fine_next)  # only the coarse EOS is left in COARSE here
    ended = (s == FINE) & ((p == lay.eos("fine")) | (p == lay.pad("fine")))
    return torch.where(in_coarse, sampled, torch.where(ended, lay.pad("fine"), forced))


def _next_segment(state: _State, i: int) -> torch.Tensor:
    p, s, lay = state.position[:, i], state.segment[:, i], state.layout
    return torch.where((s == COARSE) & (p != lay.eos("coarse")), COARSE, FINE)


def _next_content(state: _State, position: torch.Tensor, segment: torch.Tensor, logits: torch.Tensor,
                  params: SamplingParams, generator) -> torch.Tensor:
    """Content i+1: sampled over the K codes at a real position, else the token the position implies."""
    lay = state.layout
    sampled = sample_from_logits(logits[:, : lay.num_codes], params.per_depth[0], generator)
    real = torch.where(segment == COARSE, position < lay.regions, position < lay.map_positions)
    is_eos = torch.where(segment == COARSE, position == lay.eos("coarse"), position == lay.eos("fine"))
    special = torch.where(is_eos, lay.eos("content"), torch.where(position == lay.sos("fine"), lay.sos("content"), lay.pad("content")))
    return torch.where(real, sampled, special)


def _tokens(state: _State, at: slice, cond: Optional[torch.Tensor], next_position: torch.Tensor,
            next_segment: torch.Tensor) -> Tokens:
    index = state.index[at].expand(state.content.shape[0], -1)
    c = None if cond is None else cond.unsqueeze(1).expand_as(index)
    return Tokens(state.content[:, at], state.position[:, at], state.segment[:, at], index, next_position, next_segment, c)


@torch.no_grad()
def sample_dq(model: DQTransformer, batch: int, cond: Optional[torch.Tensor] = None, params: Optional[SamplingParams] = None,
              generator: Optional[torch.Generator] = None, use_cache: bool = True) -> tuple[torch.Tensor, Sequences]:
    """(codes (B, P, 1) on the DQ-VAE's map, the sampled Sequences)."""
    params = (params or SamplingParams()).resolve(1, model.num_codes)
    if params.cfg_scale != 1.0:
        raise ValueError("--cfg-scale: the DQ-Transformer samples without classifier-free guidance (the paper uses none)")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    state = _State(model, batch, device)
    caches = model.new_caches(batch, device, dtype) if use_cache else None
    for i in range(model.layout.max_length - 1):
        _step(model, state, i, cond, params, generator, caches)
        if (i + 1) % _CHECK_DONE_EVERY == 0 and bool((state.position[:, i + 1] == model.layout.pad("fine")).all()):
            break
    seq = state.sequences()
    codes, _ = to_codes(seq, model.layout)
    return codes.view(batch, -1, 1), seq


def _step(model: DQTransformer, state: _State, i: int, cond, params: SamplingParams, generator, caches) -> None:
    """Token i in, position and content i+1 out (written into `state`)."""
    at = slice(i, i + 1) if caches else slice(0, i + 1)
    hidden = model.step(_tokens(state, at, cond, None, None), caches[0] if caches else None)
    p_next = _next_position(state, i, model.position_head(hidden[:, -1]), generator)
    s_next = _next_segment(state, i)
    state.position[:, i + 1], state.segment[:, i + 1] = p_next, s_next
    chosen = (s_next == COARSE) & (p_next < model.layout.regions)
    region = p_next.clamp(max=model.layout.regions - 1).unsqueeze(1)
    state.coarse_chosen |= torch.zeros_like(state.coarse_chosen).scatter_(1, region, chosen.unsqueeze(1))  # no host read
    shifted = (state.position[:, at.start + 1 : i + 2], state.segment[:, at.start + 1 : i + 2])
    content_in = model.content_inputs(hidden, _tokens(state, at, cond, *shifted))
    out = model.content_stack(content_in, caches[1] if caches else None)
    state.content[:, i + 1] = _next_content(state, p_next, s_next, model.content_head(out[:, -1]), params, generator)
