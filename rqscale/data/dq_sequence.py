"""DQ-VAE codes <-> the DQ-Transformer's coarse-to-fine sequence, and the packed batches it trains on
(Huang et al., CVPR 2023, Sec. 3.2; R = CrossmodalGroup/DynamicVectorQuantization, permuter.py).

One image's sequence, for a code map of 2h x 2w positions under h x w regions (grain 1 = fine):
  coarse segment   SOS, the coarse regions' codes in region raster order, EOS
  fine segment     SOS, the codes at every map position outside the coarse regions, in raster order, EOS
Each token is (content, position, segment): a coarse token's position is its region index, a fine
token's its map index; SOS / EOS have their own position ids. A coarse region's content is its one
code (the map holds it at all 4 of the region's positions). Length (N_c + 2) + (4 N_f + 2).

Vocabularies (R's layout: pad, EOS, SOS after the real ids):
  content   0..K-1 codes, K pad, K+1 EOS, K+2 SOS
  coarse    0..R-1 regions, R pad, R+1 EOS, R+2 SOS          (R = h w)
  fine      0..P-1 positions, P pad, P+1 EOS, P+2 SOS        (P = 4 h w)

Batches are packed, not padded (a deviation from R, which pads each segment to the batch maximum, so
pads sit between the segments): sequences run from 260 to 1028 tokens at 256 x 256, and rows are
filled first-fit by decreasing length, each token attending causally within its own sample only. A
token's absolute position is its index in its own sequence, as in an unpadded sequence of R's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

COARSE, FINE = 0, 1  # segment ids


@dataclass(frozen=True)
class SequenceLayout:
    regions_h: int  # h: regions per column (the coarse grid, F = 16)
    regions_w: int
    num_codes: int  # K

    @property
    def regions(self) -> int:
        return self.regions_h * self.regions_w

    @property
    def map_positions(self) -> int:  # the fine grid, F = 8
        return 4 * self.regions

    @property
    def max_length(self) -> int:
        """All regions fine: SOS, EOS, SOS, 4 h w codes, EOS."""
        return self.map_positions + 4

    def pad(self, vocab: str) -> int:
        return self.vocab_base(vocab)

    def eos(self, vocab: str) -> int:
        return self.vocab_base(vocab) + 1

    def sos(self, vocab: str) -> int:
        return self.vocab_base(vocab) + 2

    def vocab_base(self, vocab: str) -> int:
        return {"content": self.num_codes, "coarse": self.regions, "fine": self.map_positions}[vocab]

    def vocab_size(self, vocab: str) -> int:
        return self.vocab_base(vocab) + 3


def layout_of(cfg) -> SequenceLayout:
    """The layout of a config's DQ-VAE (code_shape [2h, 2w, 1])."""
    h, w, _ = cfg.rqvae.code_shape
    return SequenceLayout(h // 2, w // 2, cfg.rqvae.num_codes)


class Sequences(NamedTuple):
    """Per-image sequences, one row each, padded at the end to the layout's max_length."""

    content: torch.Tensor  # (B, L) long
    position: torch.Tensor  # (B, L) long, in the vocabulary of the token's segment
    segment: torch.Tensor  # (B, L) long: COARSE or FINE; pads count as FINE
    length: torch.Tensor  # (B,) long


def _upsampled(regions: torch.Tensor, w: int) -> torch.Tensor:
    """(B, h*w) per-region values -> (B, 4*h*w) at the 2h x 2w map's positions."""
    b = regions.shape[0]
    grid = regions.view(b, -1, w)
    return grid.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).reshape(b, -1)


SEGMENT_MARKERS = 4  # SOS and EOS of each of the two segments


def sequence_lengths(grain: torch.Tensor) -> torch.Tensor:
    """(B,) each image's sequence length from its grain map (B, h, w): one code per coarse region, four per fine
    one, and the segment markers; on whichever device `grain` lives (the reader's: the host)."""
    regions = grain.flatten(1)
    return regions.shape[1] + 3 * regions.sum(dim=1) + SEGMENT_MARKERS


def to_sequences(codes: torch.Tensor, grain: torch.Tensor, layout: SequenceLayout) -> Sequences:
    """Codes (B, 2h, 2w[, 1]) and grain (B, h, w) (1 = fine) -> Sequences, on their device, without a
    host read: every token is scattered to its slot, computed from running counts."""
    b, n_r, n_p, big = codes.shape[0], layout.regions, layout.map_positions, layout.max_length
    flat = codes.reshape(b, n_p)
    fine_region = grain.reshape(b, n_r).bool()
    coarse_region = ~fine_region
    region_code = flat.view(b, layout.regions_h, 2, layout.regions_w, 2)[:, :, 0, :, 0].reshape(b, n_r)  # top-left copy
    free = _upsampled(fine_region, layout.regions_w)  # map positions a fine segment covers
    n_c, n_f = coarse_region.sum(1), free.sum(1)
    out = [torch.full((b, big + 1), layout.pad(v), dtype=torch.long, device=codes.device) for v in ("content", "fine")]
    segment = torch.full((b, big + 1), FINE, dtype=torch.long, device=codes.device)
    content, position = out
    rows = torch.arange(b, device=codes.device).unsqueeze(1)
    dump = torch.full_like(flat, big)  # non-members go to a spare last column, dropped below

    def put(slots, members, c, p, s):
        slots = torch.where(members, slots, dump[:, : slots.shape[1]])
        content[rows, slots], position[rows, slots], segment[rows, slots] = c, p, s

    one = torch.ones(b, 1, dtype=torch.bool, device=codes.device)
    ids = lambda n: torch.arange(n, device=codes.device).expand(b, -1)  # noqa: E731
    col = lambda t: t.unsqueeze(1)  # noqa: E731
    put(torch.zeros_like(col(n_c)), one, layout.sos("content"), layout.sos("coarse"), COARSE)
    put(coarse_region.long().cumsum(1), coarse_region, region_code, ids(n_r), COARSE)
    put(col(n_c) + 1, one, layout.eos("content"), layout.eos("coarse"), COARSE)
    put(col(n_c) + 2, one, layout.sos("content"), layout.sos("fine"), FINE)
    put(col(n_c) + 2 + free.long().cumsum(1), free, flat, ids(n_p), FINE)
    put(col(n_c + n_f) + 3, one, layout.eos("content"), layout.eos("fine"), FINE)
    return Sequences(content[:, :big], position[:, :big], segment[:, :big], n_c + n_f + SEGMENT_MARKERS)


def to_codes(seq: Sequences, layout: SequenceLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences -> (codes (B, 2h, 2w), grain (B, h, w)): coarse codes fill their region's 4 positions,
    then fine codes overwrite theirs (R's forward_back)."""
    b, n_r, n_p = seq.content.shape[0], layout.regions, layout.map_positions
    is_code = seq.content < layout.num_codes
    coarse = is_code & (seq.segment == COARSE) & (seq.position < n_r)
    fine = is_code & (seq.segment == FINE) & (seq.position < n_p)
    rows = torch.arange(b, device=seq.content.device).unsqueeze(1).expand_as(seq.content)
    regions = torch.zeros(b, n_r, dtype=torch.long, device=seq.content.device)
    regions[rows[coarse], seq.position[coarse]] = seq.content[coarse]
    grain = torch.ones(b, n_r, dtype=torch.long, device=seq.content.device)
    grain[rows[coarse], seq.position[coarse]] = 0
    codes = _upsampled(regions, layout.regions_w)
    codes[rows[fine], seq.position[fine]] = seq.content[fine]
    return codes.view(b, 2 * layout.regions_h, 2 * layout.regions_w), grain.view(b, layout.regions_h, layout.regions_w)


class PackedRows(NamedTuple):
    """Where each packed slot's input token comes from: `source` (R, C) indexes the flattened (B * L)
    sequences (-1: an empty slot); the slot's target is the next token, source + 1."""

    source: torch.Tensor
    sample: torch.Tensor  # (R, C) long: the sample the slot belongs to, -1 for empty slots
    padding: float  # the empty share of the R x C slots


def pack(lengths: list[int], max_length: int) -> PackedRows:
    """First-fit-decreasing packing of each sample's inputs (its length - 1 tokens: the last token is only
    a target) into rows as long as the longest sample's, on the host."""
    inputs = [n - 1 for n in lengths]
    capacity, rows, fill = max(inputs), [], []
    for i in sorted(range(len(inputs)), key=lambda i: -inputs[i]):
        row = next((r for r, used in enumerate(fill) if used + inputs[i] <= capacity), None)
        if row is None:
            rows.append([])
            fill.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        fill[row] += inputs[i]
    source = np.full((len(rows), capacity), -1, dtype=np.int64)
    sample = np.full((len(rows), capacity), -1, dtype=np.int64)
    for r, members in enumerate(rows):
        at = 0
        for i in members:
            source[r, at : at + inputs[i]] = i * max_length + np.arange(inputs[i])
            sample[r, at : at + inputs[i]] = i
            at += inputs[i]
    padding = 1.0 - sum(inputs) / source.size
    return PackedRows(torch.from_numpy(source), torch.from_numpy(sample), padding)


def packed_attention(sample: torch.Tensor) -> torch.Tensor:
    """(R, 1, C, C) bool: slot q attends slot k when both hold the same sample and k <= q. Empty slots
    (sample -1) attend each other causally, so no row of the softmax is empty."""
    c = sample.shape[1]
    causal = torch.ones(c, c, dtype=torch.bool, device=sample.device).tril_()
    return ((sample.unsqueeze(2) == sample.unsqueeze(1)) & causal).unsqueeze(1)
