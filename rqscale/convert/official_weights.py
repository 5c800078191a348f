"""The authors' state dicts (kakaobrain/rq-vae-transformer, "R") renamed and reshaped into rqscale's.

Every tensor of R's file is either placed in rqscale's model or named in `dropped` with the reason, and every
tensor of rqscale's model is filled from R's file or named in `filled` with the reason; anything else is a
ConversionError naming the key. What has no counterpart, and why (read from R's code):
  R's shared codebook is one module listed D times, so its file holds D equal copies: one is kept (after
  checking the others equal it). R's codebook has a padding row (nn.Embedding(K + 1, padding_idx=K)) that is
  never chosen: dropped. R's last spatial position embedding (pos_emb_hw[T - 1]) is never read (the last code
  predicts nothing): dropped. rqscale's null class (row K of class_emb, for classifier-free guidance) and a text
  model's pos_spatial[0] (its text tokens carry their own positions) have no R tensor: zeros, never read by
  the converted model (its cond_dropout is 0, so guidance is refused).
Transforms: R's separate query/key/value Linears -> one fused qkv (order q, k, v); R sums D per-depth
Linear(e_d) outputs as the spatial input, which adds the bias D times, where rqscale applies one Linear to the
summed embeddings, so the bias is multiplied by D; R's decoder lists its levels from high to low resolution
(`up.0` is the last applied), rqscale's in the order they run.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch

from rqscale.convert.errors import ConversionError


class Converted(NamedTuple):
    state: dict  # rqscale key -> tensor
    dropped: dict  # R key -> why it has no counterpart
    filled: dict  # rqscale key -> why it has no R source
    sources: dict  # rqscale key -> the R key it came from (refusals name R's key)


def _tensor(source: dict, key: str) -> torch.Tensor:
    if key not in source:
        raise ConversionError(key, "is missing from the authors' state dict")
    return source[key]


def _place(out: dict, sources: dict, target: str, tensor: torch.Tensor, origin: str) -> None:
    if target in out:
        raise ConversionError(origin, f"and '{sources[target]}' both map to rqscale's '{target}'")
    out[target], sources[target] = tensor, origin


def _has_attention(resolution: int, level: int, attn_resolutions) -> bool:
    return resolution // 2**level in attn_resolutions


def _slot(block: int, kind: str, attention: bool) -> int:
    """Index in rqscale's per-level list, where each res block is followed by its attention block if any."""
    return block * (2 if attention else 1) + (1 if kind == "attn" else 0)


_MID = {"block_1": "0", "attn_1": "1", "block_2": "2"}
_LEVEL = re.compile(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.+)")
_RESAMPLE = re.compile(r"(encoder|decoder)\.(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(.+)")
_MID_KEY = re.compile(r"(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.(.+)")
_CODEBOOK = re.compile(r"quantizer\.codebooks\.(\d+)\.(weight|embed_ema|cluster_size_ema)")


def stage1_state(source: dict, rqvae) -> Converted:
    """R's RQ-VAE state dict -> rqscale's RQVAEConfig `rqvae` (an RQVAEConfig)."""
    levels, out, dropped, sources = len(rqvae.ch_mult), {}, {}, {}
    for key, tensor in source.items():
        target = _stage1_name(key, levels, rqvae)
        if target is None:
            target, tensor = _codebook(key, tensor, source, rqvae, dropped)
        if target is not None:
            _place(out, sources, target, tensor, key)
    return Converted(out, dropped, {}, sources)


def _stage1_name(key: str, levels: int, rqvae):
    """rqscale's name of an R encoder/decoder/conv key, or None for a quantizer key."""
    if m := _LEVEL.fullmatch(key):
        part, _, level, kind, block, rest = m.groups()
        attention = _has_attention(rqvae.resolution, int(level), rqvae.attn_resolutions)
        ours = int(level) if part == "encoder" else levels - 1 - int(level)
        return f"{part}.levels.{ours}.{_slot(int(block), kind, attention)}.{rest.replace('nin_shortcut', 'shortcut')}"
    if m := _RESAMPLE.fullmatch(key):
        part, _, level, _, rest = m.groups()
        ours = int(level) if part == "encoder" else levels - 1 - int(level)
        return f"{part}.{'downs' if part == 'encoder' else 'ups'}.{ours}.conv.{rest}"
    if m := _MID_KEY.fullmatch(key):
        return f"{m.group(1)}.mid.{_MID[m.group(2)]}.{m.group(3)}"
    if key.startswith("quantizer."):
        return None
    return key  # conv_in, norm_out, conv_out, quant_conv, post_quant_conv: the same names


def _codebook(key: str, tensor: torch.Tensor, source: dict, rqvae, dropped: dict) -> tuple:
    """(rqscale key, tensor) of an R codebook tensor, or (None, None) for a dropped copy."""
    m = _CODEBOOK.fullmatch(key)
    if m is None:
        raise ConversionError(key, "is not a tensor of the authors' RQ-VAE this converter knows")
    depth, name = int(m.group(1)), m.group(2)
    if rqvae.shared_codebook and depth > 0:
        if not torch.equal(tensor, _tensor(source, f"quantizer.codebooks.0.{name}")):
            raise ConversionError(key, "differs from codebook 0, but the config says the codebook is shared")
        dropped[key] = "a copy of the shared codebook (R lists one module D times)"
        return None, None
    if name != "weight":
        return f"quantizer.codebooks.{depth}.{name}", tensor
    if tensor.shape[0] != rqvae.num_codes + 1:
        raise ConversionError(key, f"has {tensor.shape[0]} rows; {rqvae.num_codes} codes + R's padding row expected")
    dropped[f"{key}[{rqvae.num_codes}]"] = "R's padding row, never chosen"
    return f"quantizer.codebooks.{depth}.embed", tensor[:-1]


_BLOCK = re.compile(r"(body|head)_transformer\.blocks\.(\d+)\.(.+)")
_STACK = {"body": "spatial", "head": "depth"}
_RENAMES = {"input_mlp.weight": "spatial_proj.weight", "head_mlp.weight": "depth_proj.weight",
            "head_mlp.bias": "depth_proj.bias", "classifier.layer_norm.weight": "head.0.weight",
            "classifier.layer_norm.bias": "head.0.bias", "classifier.linear.weight": "head.1.weight",
            "classifier.linear.bias": "head.1.bias", "cond_classifier.layer_norm.weight": "text_head.0.weight",
            "cond_classifier.layer_norm.bias": "text_head.0.bias", "cond_classifier.linear.weight": "text_head.1.weight",
            "cond_classifier.linear.bias": "text_head.1.bias"}
_SPECIAL = {"input_mlp.bias", "pos_emb_hw", "pos_emb_cond", "pos_emb_d", "cond_emb.weight"}


def stage2_state(source: dict, model_cfg, code_shape, codebook: torch.Tensor) -> Converted:
    """R's RQ-Transformer state dict -> rqscale's, for stage2.model `model_cfg`; `codebook` (K, n_z) is the
    converted RQ-VAE's (R's stage 2 embeds codes with the stage-1 codebook and stores none itself)."""
    h, w, depth = code_shape
    out, dropped, sources = {"codebook": codebook}, {}, {"codebook": "the RQ-VAE's quantizer.codebooks.0.weight"}
    for key, tensor in source.items():
        if m := _BLOCK.fullmatch(key):
            _block_tensor(key, m, source, out, sources)
        elif key in _RENAMES:
            _place(out, sources, _RENAMES[key], tensor, key)
        elif key not in _SPECIAL:
            raise ConversionError(key, "is not a tensor of the authors' RQ-Transformer this converter knows")
    # R adds the input bias once per depth (module docstring)
    _place(out, sources, "spatial_proj.bias", _tensor(source, "input_mlp.bias") * depth, "input_mlp.bias")
    _place(out, sources, "pos_depth", _tensor(source, "pos_emb_d")[0], "pos_emb_d")
    positions = _tensor(source, "pos_emb_hw")[0]
    dropped[f"pos_emb_hw[{h * w - 1}]"] = "R's last spatial position embedding, never read"
    filled = _condition(model_cfg, source, positions[: h * w - 1], out, sources)
    return Converted(out, dropped, filled, sources)


def _block_tensor(key: str, m, source: dict, out: dict, sources: dict) -> None:
    stack, index, rest = _STACK[m.group(1)], m.group(2), m.group(3)
    prefix = f"{stack}.blocks.{index}."
    if q := re.fullmatch(r"attn\.(query|key|value)\.(weight|bias)", rest):
        if q.group(1) == "query":  # fused once, from the three
            base = key[: -len(rest)] + "attn."
            parts = [_tensor(source, base + f"{p}.{q.group(2)}") for p in ("query", "key", "value")]
            _place(out, sources, prefix + f"attn.qkv.{q.group(2)}", torch.cat(parts), key)
        return
    if not re.fullmatch(r"(ln1|ln2|attn\.proj|mlp\.0|mlp\.2)\.(weight|bias)", rest):
        raise ConversionError(key, "is not a tensor of the authors' attention block this converter knows")
    _place(out, sources, prefix + rest, source[key], key)


def _condition(model_cfg, source: dict, code_positions: torch.Tensor, out: dict, sources: dict) -> dict:
    """The condition embeddings and the spatial position table; returns the rqscale tensors filled with zeros."""
    cond, cond_pos, width = _tensor(source, "cond_emb.weight"), _tensor(source, "pos_emb_cond")[0], code_positions.shape[1]
    sources.update({"text_emb.weight": "cond_emb.weight", "pos_text": "pos_emb_cond", "class_emb.weight": "cond_emb.weight",
                    "start": "cond_emb.weight", "pos_spatial": "pos_emb_hw and pos_emb_cond"})
    first = torch.zeros(1, width, dtype=code_positions.dtype)
    filled = {}
    if model_cfg.condition == "text":
        out["text_emb.weight"], out["pos_text"] = cond, cond_pos
        filled["pos_spatial[0]"] = "zeros: a text model's text tokens carry their own positions (pos_text)"
    else:
        first = cond_pos[:1]
        if model_cfg.condition == "class":
            out["class_emb.weight"] = torch.cat([cond, torch.zeros(1, width, dtype=cond.dtype)])
            filled[f"class_emb.weight[{cond.shape[0]}]"] = "zeros: the null class of guidance, which R never trained"
        else:
            out["start"] = cond[:1]
    out["pos_spatial"] = torch.cat([first, code_positions])
    return filled


def check_against(converted: Converted, model: torch.nn.Module, what: str) -> dict:
    """The converted state dict checked key by key and shape by shape against `model` (built on any device,
    meta included): rqscale keys with no source and shape mismatches are refused naming the key."""
    expected = model.state_dict()
    extra = sorted(set(converted.state) - set(expected))
    if extra:
        name = converted.sources.get(extra[0], extra[0])
        raise ConversionError(name, f"is not a tensor of the authors' {what} this converter knows (it would be "
                              f"rqscale's '{extra[0]}', which {what} has not)")
    missing = sorted(set(expected) - set(converted.state))
    if missing:
        raise ConversionError(missing[0], f"of rqscale's {what} gets no tensor from the authors' file")
    for key, tensor in converted.state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConversionError(converted.sources.get(key, key), f"gives shape {tuple(tensor.shape)} for rqscale's "
                                  f"'{key}'; the {what} its config describes wants {tuple(expected[key].shape)}")
    return {k: v.float() if v.is_floating_point() else v for k, v in converted.state.items()}
