"""Pre-LN causal transformer blocks with an optional KV cache (used by both RQ-Transformer stacks).

Attention goes through `scaled_dot_product_attention`, which dispatches to flash / memory-efficient
kernels on GPU and to a fused CPU kernel otherwise. Training on CPU with dropout is the exception: SDPA's
fused CPU kernel takes no dropout, so it would fall back to its math path anyway; `_math_attention` is
that path with the faster dropout mask below (see `dropout`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class KVCache:
    """Preallocated keys and values for every layer of one stack.

    Keys are stored transposed, (layers, B, heads, head_dim, max_len), so that q @ K^T over the first
    t positions is a plain strided matmul: on 2 CPU cores this read the cache at 13 GB/s against
    9 GB/s for the (max_len, head_dim) layout (batch 100, bf16, 8 layers). Values: (layers, B, heads,
    max_len, head_dim).
    """

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int, device, dtype):
        self.k_t = torch.empty((layers, batch, heads, head_dim, max_len), device=device, dtype=dtype)
        self.v = torch.empty((layers, batch, heads, max_len, head_dim), device=device, dtype=dtype)
        self.length = 0  # positions already written

    def reset(self) -> None:
        self.length = 0


def _single_query_attention(q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One query against the cache, as two batched matmuls with an fp32 softmax.

    Decoding is bound by reading the cache; on CPU this ran ~3.7x faster than SDPA's kernel at 256
    cached positions (batch 100, bf16), and needs no mask: every cached position is in the past.
    """
    scores = torch.matmul(q, k_t) * (q.shape[-1] ** -0.5)
    return torch.matmul(scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype), v)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), with the mask drawn faster on CPU.

    The arithmetic of F.dropout on CPU: a keep mask ~ Bernoulli(1 - p) in x's dtype, divided by 1 - p,
    times x. Only the draw differs: the mask is `U[0, 1) < 1 - p` with one fp32 uniform an element from
    torch.rand, because the bernoulli_ kernel took 4.5 ns an element on 2 CPU cores against 2.2 ns for
    rand, and the stage-2 bench model drops ~40M elements a step (a whole dropout: 20 -> 12 ms for
    (2048, 4, 512) bf16). Same distribution, drawn from the same global generator, so seeding, activation
    checkpointing and checkpointed RNG state behave as before; the individual masks differ from
    F.dropout's. Off CPU, F.dropout's fused kernel is used as is.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    keep = 1.0 - p
    noise = torch.rand(x.shape, device=x.device).lt_(keep).to(x.dtype).div_(keep)
    return x * noise


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` above (same state dict, repr and isinstance as nn.Dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention with dropout on the attention weights, as SDPA's math path computes it on CPU
    (what scaled_dot_product_attention runs there whenever dropout_p > 0): q, k, v upcast to fp32,
    softmax(q k^T / sqrt(head_dim) + causal mask), dropout, times v, back to the input dtype.
    The fp32 upcast is SDPA's own choice for bf16 inputs (scores and softmax sums keep 24-bit precision);
    here it is kept so training numerics do not change. Only the dropout mask's draw is faster."""
    length = q.shape[-2]
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
    future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu_(1)
    weights = scores.masked_fill_(future, float("-inf")).softmax(dim=-1)
    return torch.matmul(dropout(weights, dropout_p), v.float()).to(q.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, attn_dropout: float, resid_dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.resid_drop = Dropout(resid_dropout)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = self._attend(q, k, v, cache, layer)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))

    def _attend(self, q, k, v, cache: Optional[KVCache], layer: int) -> torch.Tensor:
        if cache is not None:
            start, t = cache.length, q.shape[2]
            cache.k_t[layer, :, :, :, start : start + t] = k.transpose(-1, -2)
            cache.v[layer, :, :, start : start + t] = v
            if start > 0:
                if t != 1:
                    raise ValueError("a non-empty KV cache takes one new position at a time")
                return _single_query_attention(q, cache.k_t[layer, :, :, :, : start + 1], cache.v[layer, :, :, : start + 1])
        p = self.attn_dropout if self.training else 0.0
        if p > 0.0 and q.device.type == "cpu":
            return _math_attention(q, k, v, p)  # SDPA's fused CPU kernel takes no dropout (see above)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # fused / flash on GPU


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP (pre-LN, as the ref's GPT blocks)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, attn_dropout: float, resid_dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, attn_dropout, resid_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim), Dropout(resid_dropout)
        )

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """A stack of blocks, optionally closed by a LayerNorm. `checkpointing` recomputes blocks in backward."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: int, attn_dropout: float, resid_dropout: float,
                 final_norm: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, attn_dropout, resid_dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim) if final_norm else nn.Identity()
        self.heads, self.head_dim = heads, dim // heads
        self.checkpointing = False

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if self.checkpointing and self.training and cache is None:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(len(self.blocks), batch, self.heads, max_len, self.head_dim, device, dtype)
