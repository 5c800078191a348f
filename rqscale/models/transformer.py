"""Pre-LN transformer blocks with an optional KV cache (used by both RQ-Transformer stacks): causal by
default; a stack built with causal=False attends both ways (the Contextual RQ-Transformer's spatial
stack), optionally restricted by a fixed boolean `attend` mask (a causal caption prefix).

Attention goes through `scaled_dot_product_attention` on GPU, which dispatches to flash /
memory-efficient kernels. On CPU it is `_math_attention`: SDPA's fused CPU kernel takes no dropout, and
at this model's lengths it was the slower one even without (2 AMD EPYC cores with AVX512-BF16, bf16,
Dec 2026; forward + backward: 41 vs 10 ms for the spatial attention of the stage-2 bench model, 32 x 8
heads x 64 positions; 112 vs 36 ms for its depth attention, 2048 x 8 x 4; forward alone without grad,
5.4 vs 3.9 and 31 vs 16 ms). `CPU_ATTENTION = "sdpa"` sends CPU through the GPU's branch (tests
check that branch, and the GPU smoke's kernel detector, on CPU).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


CPU_ATTENTION = "math"  # "math": _math_attention on CPU; "sdpa": scaled_dot_product_attention, as on GPU


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


# The CPU dropout mask compares 16-bit uniform integers with a threshold: p is rounded to a multiple of
# 2^-16 (0.1 -> 0.100006) and the kept elements are scaled by the exact 1 / P(keep), so the layer stays
# unbiased. One full-range int64 draw gives four elements' 16-bit integers.
_MASK_LEVELS = 1 << 16


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> tuple:
    """(keep mask of `shape`: 1 with probability 1 - p rounded to 2^-16, else 0, in `dtype`; 1 / P(keep)),
    from the global RNG. The mask is written in the activations' dtype by the comparison itself: a bool
    mask would be converted by every product with it (7 ms a (2048, 4, 512) product on 2 cores, 0.5 ms
    for the bf16 one)."""
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)  # all 64 bits
    levels = words.view(torch.int16)[:count].view(shape)  # uniform on [-2^15, 2^15)
    dropped = min(_MASK_LEVELS - 1, round(p * _MASK_LEVELS))
    keep = torch.ge(levels, dropped - (_MASK_LEVELS >> 1), out=torch.empty(shape, dtype=dtype, device=device))
    return keep, _MASK_LEVELS / (_MASK_LEVELS - dropped)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """F.dropout(x, p, training), with the mask drawn faster on CPU.

    The arithmetic of F.dropout: keep each element with probability 1 - p and scale the kept ones by
    1 / (1 - p). Only the draw differs on CPU (`keep_mask`): 16-bit integers from full 64-bit draws
    instead of one fp32 uniform an element. For a (2048, 4, 512) mask on 2 AMD EPYC cores (Dec 2026):
    torch.rand 28-30 ms, bernoulli_ (F.dropout's own draw) 40 ms, the int64 draw 6-9 ms; the stage-2
    bench model drops ~43M elements a step. Drawn from the same global generator, so seeding, activation checkpointing and
    checkpointed RNG state behave as before. Off CPU, F.dropout's fused kernel is used as is.
    """
    if not 0.0 <= p <= 1.0:  # the integer threshold would wrap, where F.dropout raises
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    keep, scale = keep_mask(x.shape, p, x.dtype, x.device)
    return (x * keep).mul_(scale)  # the scale in fp32 arithmetic: a bf16 mask value 1/(1-p) would bias it


class _DropoutAdd(torch.autograd.Function):
    """residual + keep * x * scale in one pass, forward and backward (CPU; see `dropout_add`)."""

    @staticmethod
    def forward(ctx, residual: torch.Tensor, x: torch.Tensor, p: float) -> torch.Tensor:
        keep, scale = keep_mask(x.shape, p, x.dtype, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.addcmul(residual, x, keep, value=scale)  # a broadcast residual is summed back by autograd

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return grad, None, None
        # addcmul's own gradient would multiply by keep * scale rounded to the mask's dtype (bf16: 1/0.9
        # -> 1.109, a 0.16% bias); a broadcast zero keeps one pass with the scale in fp32 arithmetic.
        zero = torch.zeros((), dtype=grad.dtype, device=grad.device).expand_as(grad)
        return grad, torch.addcmul(zero, grad, keep, value=ctx.scale), None


def dropout_add(residual: torch.Tensor, x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """residual + dropout(x, p, training): the residual branch of a block.

    On CPU the mask's product, its scale and the sum are one pass (addcmul, rounded once) instead of
    three, and so is the backward; the stage-2 bench model's residual branches add ~34M elements a step
    (Dec 2026). Off CPU, without dropout, or where the two dtypes differ (an fp32 residual stream under
    autocast), it is the unfused sum."""
    if training and 0.0 < p < 1.0 and x.device.type == "cpu" and residual.dtype == x.dtype:
        return _DropoutAdd.apply(residual, x, p)
    return residual + dropout(x, p, training)


class Dropout(nn.Dropout):
    """nn.Dropout through `dropout` above (same state dict, repr and isinstance as nn.Dropout)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + self(x), fused on CPU (`dropout_add`)."""
        return dropout_add(residual, x, self.p, self.training)


def _math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, causal: bool = True,
                    attend: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention with dropout on the attention weights, for CPU training (SDPA's fused CPU kernel takes no
    dropout): softmax(q k^T / sqrt(head_dim) + mask), dropout, times v. The mask hides the pairs where
    `attend` ((L, L), or (B, 1, L, L) per row) is False, else the future when `causal`, else nothing.

    Everything stays in the inputs' dtype (bf16 under A.3's mixed precision): the two products, the scores'
    scale and mask, and the softmax, which accumulates in fp32 inside the kernel and rounds once; its
    backward reads that rounded output. This is the arithmetic of the authors' attention under
    torch.autocast (CPU autocast leaves their softmax in bf16), forward and backward, but for where the
    scale is rounded: they scale k before the product, here the scores after it (exact where head_dim is
    a power of 4, e.g. 16 and 64; one more bf16 rounding otherwise, as theirs). SDPA's own math path (and the GPU kernels) keep the scores in fp32 instead: against
    exact attention of the same bf16 inputs its error was ~2x smaller at unit-scale scores and up to ~5x
    on sharp ones. On 2 CPU cores, forward + backward took 10.8 ms for the bench model's spatial attention
    (32 x 8 heads x 64 positions, dropout 0.1) against 12.7 ms with the scores upcast to fp32 for the
    softmax, and 19.8 against 22.0 ms for its depth attention (2048 x 8 x 4) (Dec 2026)."""
    length = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
    if attend is not None:
        scores.masked_fill_(~attend, float("-inf"))
    elif causal:
        scores.masked_fill_(torch.ones(length, length, dtype=torch.bool, device=q.device).triu_(1), float("-inf"))
    return torch.matmul(dropout(scores.softmax(dim=-1), dropout_p), v)


class CausalSelfAttention(nn.Module):
    """Self-attention, causal unless built with causal=False."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, resid_dropout: float, causal: bool = True):
        super().__init__()
        self.causal = causal
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.resid_drop = Dropout(resid_dropout)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0,
                attend: Optional[torch.Tensor] = None, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention branch's output, dropped out; added to `residual` when one is given (fused on CPU)."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = self.proj(self._attend(q, k, v, cache, layer, attend).transpose(1, 2).reshape(b, t, c))
        return self.resid_drop(y) if residual is None else self.resid_drop.add_to(residual, y)

    def _attend(self, q, k, v, cache: Optional[KVCache], layer: int, attend: Optional[torch.Tensor]) -> torch.Tensor:
        if cache is not None and not self.causal:
            raise ValueError("a KV cache serves causal decoding only")
        if cache is not None:
            start, t = cache.length, q.shape[2]
            cache.k_t[layer, :, :, :, start : start + t] = k.transpose(-1, -2)
            cache.v[layer, :, :, start : start + t] = v
            if start > 0:
                if t != 1:
                    raise ValueError("a non-empty KV cache takes one new position at a time")
                return _single_query_attention(q, cache.k_t[layer, :, :, :, : start + 1], cache.v[layer, :, :, : start + 1])
        p = self.attn_dropout if self.training else 0.0
        # `attend`, when given, is the whole rule, causality included (packed DQ-Transformer rows: causal
        # within each sample only); a plain causal stack passes none and keeps the fused causal kernels.
        if q.device.type == "cpu" and CPU_ATTENTION == "math":
            return _math_attention(q, k, v, p, self.causal, attend)  # faster than SDPA's CPU kernel, takes dropout
        # Fused / flash kernels on GPU; a boolean mask (True = may attend) selects the memory-efficient one.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p, is_causal=self.causal and attend is None)


class Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP (pre-LN, as the ref's GPT blocks)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, attn_dropout: float, resid_dropout: float, causal: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, attn_dropout, resid_dropout, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.mlp_drop = Dropout(resid_dropout)  # apart from mlp: fused with the residual sum (no parameters)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0,
                attend: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attn(self.ln1(x), cache, layer, attend, residual=x)
        return self.mlp_drop.add_to(x, self.mlp(self.ln2(x)))


class CausalTransformer(nn.Module):
    """A stack of blocks, optionally closed by a LayerNorm. `checkpointing` recomputes blocks in backward.
    causal=False: every position attends to every other (or as `attend`, given to forward, allows)."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: int, attn_dropout: float, resid_dropout: float,
                 final_norm: bool = True, causal: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, attn_dropout, resid_dropout, causal) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim) if final_norm else nn.Identity()
        self.heads, self.head_dim = heads, dim // heads
        self.checkpointing = False

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, attend: Optional[torch.Tensor] = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            if self.checkpointing and self.training and cache is None:
                x = checkpoint(block, x, None, i, attend, use_reentrant=False)
            else:
                x = block(x, cache, i, attend)
        if cache is not None:
            cache.length += x.shape[1]
        return self.ln_f(x)

    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(len(self.blocks), batch, self.heads, max_len, self.head_dim, device, dtype)
