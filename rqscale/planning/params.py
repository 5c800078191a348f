"""Parameter counts of any config, with the models built on the meta device (no memory, ~1 s for 3.8B)."""
from __future__ import annotations

import torch

from rqscale.config import Config


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def largest_layer(*modules: torch.nn.Module) -> int:
    """Parameters of the largest single module (its own, not its children's): what ZeRO-3 gathers whole
    at once, counted as DeepSpeed's `model_to_params` does (deepspeed/runtime/zero/stage3.py)."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for root in modules for m in root.modules())


def build_stage2(cfg: Config) -> torch.nn.Module:
    from rqscale.models import build_stage2_model

    r = cfg.rqvae
    with torch.device("meta"):
        return build_stage2_model(cfg.stage2.model, r.code_shape, r.num_codes, r.code_dim)


def build_stage1(cfg: Config) -> tuple:
    """(RQ-VAE, PatchGAN discriminator) on the meta device."""
    from rqscale.losses import PatchDiscriminator
    from rqscale.models import build_stage1_model

    with torch.device("meta"):
        model = build_stage1_model(cfg.rqvae)
        disc = PatchDiscriminator(cfg.rqvae.in_channels, cfg.stage1.loss.disc_ndf, cfg.stage1.loss.disc_layers)
    return model, disc


def stage2_params(cfg: Config) -> dict:
    """Counts by stack: a DQ-Transformer's Position-Transformer under "spatial" and its Content-Transformer
    under "depth", as the config keys that size them (stage2.model.spatial_layers / depth_layers)."""
    model = build_stage2(cfg)
    first, second = (model.position_stack, model.content_stack) if cfg.stage2.model.kind == "dq" else (model.spatial, model.depth)
    total, spatial, depth = _count(model), _count(first), _count(second)
    return {"params_total": total, "params_spatial": spatial, "params_depth": depth,
            "params_embeddings_and_heads": total - spatial - depth}


def stage1_params(cfg: Config) -> dict:
    model, disc = build_stage1(cfg)
    # Counted as the reference does: its codebook is an nn.Embedding weight with one padding row.
    codebook = sum(b.embed.numel() + b.dim for b in model.quantizer.codebooks)
    return {"params_total": _count(model) + codebook, "params_encoder": _count(model.encoder),
            "params_decoder": _count(model.decoder), "params_codebook": codebook, "params_discriminator": _count(disc)}


def trained_params(cfg: Config) -> tuple:
    """(parameters the engines train, largest layer): what ZeRO partitions.

    Stage 2: the RQ-Transformer (the frozen RQ-VAE sits outside the engine). Stage 1: the RQ-VAE's
    parameters (its codebook is an EMA buffer) plus the discriminator, which has its own engine."""
    if cfg.stage == "stage2":
        model = build_stage2(cfg)
        return _count(model), largest_layer(model)
    model, disc = build_stage1(cfg)
    return _count(model) + _count(disc), largest_layer(model, disc)
