"""One codebook C = {e(k)} updated only by an exponential moving average of its clusters.

Follows VQ-VAE's EMA rule (van den Oord et al. 2017, App. A.1) as the RQ-VAE reference code uses it:
  N_k <- decay * N_k + (1 - decay) * n_k            (n_k: vectors assigned to k, summed over ranks)
  m_k <- decay * m_k + (1 - decay) * sum_{i->k} z_i
  e(k) = m_k / N~_k,  N~_k = n (N_k + eps) / (n + K eps),  n = sum_k N_k   (Laplace smoothing)
Codes whose EMA count falls below 1 are restarted from batch vectors broadcast from rank 0
(JukeBox's random restart, A.3). Everything lives in buffers, never parameters, so optimizers and
ZeRO-3 partitioning never see the codebook.

Restarts without host syncs: deciding on the host whether any code is dead would stall a GPU at
every update, and the reference instead broadcasts K x dim candidates at every update, dead codes or
not. Here the host reads the smallest count only where it may (`refresh_restart_budget`, called at
logging and checkpoint steps), and from it knows how many updates must pass before any code *can*
fall below 1: a count never shrinks faster than N <- decay * N. Until then restarts are skipped
exactly (nothing to restart); afterwards every update runs the reference's masked restart.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from rqscale.quantizer.collective import Collective

# Safety factor on the bound below: the EMA runs in fp32, the bound in float64 (1% >> accumulated rounding).
_RESTART_BOUND_MARGIN = 1.01

# Rows of the (rows x K) score matrix computed at once: bounds memory at 128 MB for K=16384
# while keeping each product large enough to run at matmul speed. The block is written into one
# reused buffer: a fresh 100 MB allocation per chunk costs page faults comparable to the matmul.
_DISTANCE_ELEMENTS_PER_CHUNK = 1 << 25


class EMACodebook(nn.Module):
    def __init__(self, num_codes: int, dim: int, decay: float = 0.99, restart_unused: bool = True, eps: float = 1e-5):
        super().__init__()
        self.num_codes, self.dim = num_codes, dim
        self.decay, self.restart_unused, self.eps = decay, restart_unused, eps
        embed = torch.randn(num_codes, dim)  # ref: nn.Embedding's N(0, 1) init
        self.register_buffer("embed", embed)
        self.register_buffer("embed_ema", embed.clone())
        self.register_buffer("cluster_size_ema", torch.zeros(num_codes))
        self.restart_free_updates = 0  # host-side: updates that cannot leave a dead code (see module doc)

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """argmin_k ||v - e(k)||^2 (Eq. 1) for rows of `vectors` (N, dim): one matmul per chunk.

        ||v||^2 is constant per row, so the argmin only needs ||e_k||^2 - 2 v.e_k.
        """
        embed = self.embed
        embed_sq = embed.pow(2).sum(dim=1)
        rows = max(1, _DISTANCE_ELEMENTS_PER_CHUNK // self.num_codes)
        codes = torch.empty(vectors.shape[0], dtype=torch.long, device=vectors.device)
        buffer = vectors.new_empty(min(rows, vectors.shape[0]), self.num_codes)
        for start in range(0, vectors.shape[0], rows):
            chunk = vectors[start : start + rows]
            scores = buffer[: chunk.shape[0]]
            torch.addmm(embed_sq, chunk, embed.t(), beta=1.0, alpha=-2.0, out=scores)
            torch.argmin(scores, dim=1, out=codes[start : start + rows])
        return codes

    def squared_distances(self, vectors: torch.Tensor) -> torch.Tensor:
        """||v - e(k)||^2 for every row and code: (N, K), used for soft labels (Eq. 15)."""
        embed = self.embed
        v_sq = vectors.pow(2).sum(dim=1, keepdim=True)
        return torch.addmm(embed.pow(2).sum(dim=1) + v_sq, vectors, embed.t(), alpha=-2.0).clamp_min_(0.0)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return self.embed[codes]

    @torch.no_grad()
    def ema_update(self, vectors: torch.Tensor, codes: torch.Tensor, collective: Collective) -> None:
        """One EMA step from (N, dim) vectors assigned to `codes`, with stats summed over ranks."""
        counts = code_histogram(codes, self.num_codes, vectors.dtype)
        sums = torch.zeros_like(self.embed_ema).index_add_(0, codes, vectors)
        collective.all_reduce_sum(counts)
        collective.all_reduce_sum(sums)
        self.cluster_size_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_ema.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        if self.restart_free_updates > 0:
            self.restart_free_updates -= 1
        elif self.restart_unused:
            self._restart_unused(vectors, collective)
        self.embed.copy_(self.embed_ema / self.smoothed_cluster_size().unsqueeze(1))

    @torch.no_grad()
    def refresh_restart_budget(self) -> int:
        """Read the smallest EMA count (one host sync: call only at logging/checkpoint steps) and set
        how many coming updates provably leave every count >= 1, so their restarts are skipped.

        Every rank holds the same counts (their statistics are all-reduced), so every rank skips the
        same updates and the restart broadcasts stay matched."""
        self.restart_free_updates = updates_before_dead_code(float(self.cluster_size_ema.min()), self.decay)
        return self.restart_free_updates

    def _load_from_state_dict(self, *args, **kwargs):
        self.restart_free_updates = 0  # new counts: the old bound no longer holds
        super()._load_from_state_dict(*args, **kwargs)

    def smoothed_cluster_size(self) -> torch.Tensor:
        """Laplace-smoothed N~_k; sums to the same total n as the raw counts."""
        n = self.cluster_size_ema.sum()
        return n * (self.cluster_size_ema + self.eps) / (n + self.num_codes * self.eps)

    def _restart_unused(self, vectors: torch.Tensor, collective: Collective) -> None:
        candidates = self._tile_with_noise(vectors)
        replacement = candidates[torch.randperm(candidates.shape[0], device=vectors.device)[: self.num_codes]]
        replacement = replacement.contiguous()
        collective.broadcast(replacement, src=0)  # every rank restarts with rank 0's choice
        used = (self.cluster_size_ema >= 1.0).to(vectors.dtype)
        self.embed_ema.mul_(used.unsqueeze(1)).add_(replacement * (1 - used).unsqueeze(1))
        self.cluster_size_ema.mul_(used).add_(1 - used)  # a restarted code starts with count 1

    def _tile_with_noise(self, vectors: torch.Tensor) -> torch.Tensor:
        """Repeat a small batch until it has K rows, jittered so repeats differ (ref)."""
        n = vectors.shape[0]
        if n >= self.num_codes:
            return vectors
        repeats = math.ceil(self.num_codes / n)
        tiled = vectors.repeat(repeats, 1)
        return tiled + torch.rand_like(tiled) * (0.01 / math.sqrt(self.dim))

    @torch.no_grad()
    def assign(self, embed: torch.Tensor) -> None:
        """Overwrite the code embeddings, keeping the EMA state consistent with them."""
        self.embed.copy_(embed)
        if self.cluster_size_ema.sum() > 0:
            self.embed_ema.copy_(embed * self.smoothed_cluster_size().unsqueeze(1))
        else:
            self.embed_ema.copy_(embed)


def updates_before_dead_code(smallest_count: float, decay: float) -> int:
    """The largest u with smallest_count * decay^u >= 1 (with a margin): after u EMA updates every count
    is at least smallest_count * decay^u, since N <- decay * N + (1 - decay) * n and n >= 0."""
    if not smallest_count >= _RESTART_BOUND_MARGIN or not 0.0 < decay < 1.0:  # also catches NaN
        return 0
    return int(math.floor(math.log(smallest_count / _RESTART_BOUND_MARGIN) / -math.log(decay)))


def code_histogram(codes: torch.Tensor, num_codes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """How often each of the K codes occurs. Not torch.bincount: on CUDA it reads max(codes) back to the
    host to size its output, a sync at every call; the output size is known here."""
    flat = codes.reshape(-1)
    return torch.zeros(num_codes, dtype=dtype, device=codes.device).index_add_(0, flat, torch.ones_like(flat, dtype=dtype))
