"""Activation memory per training sample: what autograd keeps between forward and backward.

Stage 2 (RQ-Transformer) is analytic, per block, after Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", Sec. 4.1): a transformer layer keeps sbh(34 + 5as/h) bytes
in 16-bit with dropout (s tokens, b samples, h width, a heads). Adapted to our blocks:
- attention is SDPA's fused kernel on GPU (flash / memory-efficient): it keeps q, k, v, the output and an
  fp32 log-sum-exp per head and token instead of the 5as/h score, softmax and dropout-mask term (attention
  dropout happens inside the kernel from a saved RNG seed);
- the 34 is then exact for a 4x MLP: LN inputs 4, QKV input 2, q/k/v 6, attention output 2 (shared with the
  output projection's input), MLP 2 + 8 + 8, two dropout masks 1 + 1 (bool on CUDA); plus fp32 LN
  statistics, 16 bytes a token;
- the spatial stack runs prefix + T - 1 tokens, the depth stack T sequences of D tokens;
- the head and loss keep the head's inputs, the (T·D·K) bf16 logits and the fp32 soft labels, which at
  K = 16,384 are as large as several blocks.
With activation checkpointing (torch.utils.checkpoint per block), every block keeps only its input; one
block at a time is recomputed in backward with all its activations (Chen et al. 2016; Korthikanti Sec. 4.3).
tests/unit/test_plan.py checks this against the bytes autograd actually saves for the debug model.

Stage 1 (convolutional RQ-VAE + LPIPS + PatchGAN) is measured instead: the generator step runs on the
meta device under saved-tensor hooks.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from rqscale.config import Config
from rqscale.config.schema import RQTransformerConfig
from rqscale.train.flops import spatial_length

BF16 = 2  # bytes of a bf16 activation (engine.precision=bf16: DeepSpeed's bf16 mode holds a bf16 model)
FP32 = 4
INDEX = 8  # int64 indices (embedding lookups, hard targets)
LN_STATS = 2 * FP32  # LayerNorm's saved mean and 1/std per token (fp32 on CUDA)
CUDA_MASK = 1  # bytes of a dropout mask element on CUDA (native_dropout keeps a bool mask)


def block_bytes(m: RQTransformerConfig, tokens: int, mask_bytes: int = CUDA_MASK) -> int:
    """Bytes one pre-LN block keeps for backward over `tokens` tokens (Korthikanti's 34sbh, fused attention).

    Per token, in units of the width c: block input, LN1 output, q/k/v (3), attention output, the residual
    sum, LN2 output (8 in all, bf16) and the MLP's GELU input and fc2 input (r each); the two residual
    dropout masks; the fused attention's fp32 log-sum-exp (one per head); two LayerNorms' statistics."""
    c = m.embed_dim
    per_token = BF16 * c * (8 + 2 * m.mlp_ratio) + FP32 * m.num_heads + 2 * LN_STATS
    if m.resid_dropout > 0:
        per_token += 2 * c * mask_bytes
    return tokens * per_token


def _inputs_bytes(cfg: Config, mask_bytes: int) -> tuple:
    """(spatial, depth) bytes outside the blocks: the input Linears' bf16 inputs (sums of code embeddings,
    Eqs. 10 and 12), the embedding dropout mask and the condition's int64 indices."""
    m, r = cfg.stage2.model, cfg.rqvae
    h, w, d = r.code_shape
    t = h * w
    spatial = BF16 * (t - 1) * r.code_dim + {"class": INDEX, "text": INDEX * m.text_length}.get(m.condition, 0)
    if m.embd_dropout > 0:
        spatial += spatial_length(m, t) * m.embed_dim * mask_bytes
    return spatial, BF16 * t * (d - 1) * r.code_dim


def head_bytes(cfg: Config) -> int:
    """The shared head (LN + Linear over T·D outputs) and the loss; the text head for text conditioning."""
    m, r = cfg.stage2.model, cfg.rqvae
    h, w, d = r.code_shape
    n, c, k = h * w * d, m.embed_dim, r.num_codes
    kept = n * (2 * BF16 * c + LN_STATS)  # LN input and Linear input
    if cfg.stage2.loss.soft_labels:
        kept += n * k * (BF16 + FP32)  # rqscale/tasks/stage2.py's soft cross-entropy keeps the logits and fp32 soft labels
    else:
        kept += n * k * FP32 + n * INDEX  # cross_entropy on fp32 logits keeps the fp32 log-softmax and the targets
    if m.condition == "text":
        lt, v = m.text_length - 1, m.text_vocab
        kept += BF16 * spatial_length(m, h * w) * c  # the text head's LN input is a slice of the whole spatial output
        kept += lt * (BF16 * c + LN_STATS) + lt * (FP32 * v + INDEX) + INDEX  # Linear input, log-softmax, targets, kept rows
    return kept


def stage2_activations(cfg: Config, checkpointing: bool, mask_bytes: int = CUDA_MASK) -> dict:
    """Bytes per sample: spatial, depth, heads, recompute (one block, with checkpointing), saved (their
    sum: autograd's saved tensors at the end of forward plus one recomputed block) and backward_transient
    (the logits' gradient, made while the saved logits are still alive). `mask_bytes`: 1 on CUDA."""
    m, r = cfg.stage2.model, cfg.rqvae
    if m.kind == "dq":
        return dq_stage2_activations(cfg, checkpointing, mask_bytes)
    h, w, d = r.code_shape
    ns, nd = spatial_length(m, h * w), h * w * d
    spatial, depth = _inputs_bytes(cfg, mask_bytes)
    if checkpointing:
        spatial += m.spatial_layers * BF16 * ns * m.embed_dim
        depth += m.depth_layers * BF16 * nd * m.embed_dim
        recompute = max(block_bytes(m, ns, mask_bytes), block_bytes(m, nd, mask_bytes))
    else:
        spatial += m.spatial_layers * block_bytes(m, ns, mask_bytes)
        depth += m.depth_layers * block_bytes(m, nd, mask_bytes)
        recompute = 0
    heads = head_bytes(cfg)
    out = {"spatial": spatial, "depth": depth, "heads": heads, "recompute": recompute}
    out["saved"] = spatial + depth + heads + recompute
    out["backward_transient"] = BF16 * nd * r.num_codes
    out["total"] = out["saved"] + out["backward_transient"]
    return out


def dq_stage2_activations(cfg: Config, checkpointing: bool, mask_bytes: int = CUDA_MASK) -> dict:
    """As stage2_activations, for a DQ-Transformer sample at the worst case: every region fine, so the
    longest sequence, alone in its packed row (4 h w + 3 inputs through both stacks and both heads)."""
    m, r = cfg.stage2.model, cfg.rqvae
    h, w, _ = r.code_shape
    n, c = h * w + 3, m.embed_dim

    def stack(layers: int) -> int:
        kept = BF16 * n * c if checkpointing else block_bytes(m, n, mask_bytes)
        return BF16 * n * c + layers * kept  # the stack's input, then each block (or its checkpointed input)

    vocab = (h * w + 3) + (r.num_codes + 3)  # the position head's and the content head's outputs
    heads = 2 * n * (2 * BF16 * c + LN_STATS) + n * vocab * FP32 + 3 * n * INDEX  # fp32 log-softmax, 3 targets
    recompute = block_bytes(m, n, mask_bytes) if checkpointing else 0
    out = {"spatial": stack(m.spatial_layers), "depth": stack(m.depth_layers), "heads": heads, "recompute": recompute}
    out["saved"] = out["spatial"] + out["depth"] + heads + recompute
    out["backward_transient"] = BF16 * n * vocab
    out["total"] = out["saved"] + out["backward_transient"]
    return out


# ---- measurement ------------------------------------------------------------------------------------
def saved_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while fn() runs, storages of `exclude`
    (the parameters) left out. A view counts its whole storage once. Works on the meta device."""
    skip = {t.untyped_storage()._cdata for t in exclude}
    seen: dict = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in skip:
            seen[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def stage1_activations(cfg: Config) -> dict:
    """Bytes per sample of the stage-1 generator step (RQ-VAE, LPIPS, discriminator on the reconstruction),
    measured on fake tensors of the real task in fp32. With engine.precision=bf16 autocast keeps convolution inputs in
    bf16 while GroupNorm runs in fp32, so this is an upper bound. The discriminator step that follows
    keeps less (two discriminator passes only)."""
    from rqscale.train.flops import BEFORE_GAN, fake_stage1, generator_step

    task, mode, images = fake_stage1(cfg.rqvae, cfg.stage1.loss)  # the real task, on fake tensors
    step = cfg.stage1.loss.disc_start if cfg.stage1.loss.disc_weight > 0 else BEFORE_GAN
    with mode:
        kept = saved_bytes(lambda: generator_step(task, images, step), list(task.parameters()))
    return {"saved": kept, "recompute": 0, "backward_transient": 0, "total": kept}
