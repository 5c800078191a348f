"""`python -m rqscale.plan CONFIG [key=value ...] [--json]`: what a config costs, without running it.

Models are built on the meta device, so even the 3.8B RQ-Transformer is counted in a second with
no memory. (Memory and time estimates join this report with the cluster work.)
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from rqscale.config import Config, ConfigError, load


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stage2_params(cfg: Config) -> dict:
    from rqscale.models import RQTransformer

    r = cfg.rqvae
    with torch.device("meta"):
        model = RQTransformer(cfg.stage2.model, tuple(r.code_shape), r.num_codes, r.code_dim)
    total, spatial, depth = _count(model), _count(model.spatial), _count(model.depth)
    return {"params_total": total, "params_spatial": spatial, "params_depth": depth,
            "params_embeddings_and_heads": total - spatial - depth}


def stage1_params(cfg: Config) -> dict:
    from rqscale.losses import PatchDiscriminator
    from rqscale.models import RQVAE

    with torch.device("meta"):
        model = RQVAE(cfg.rqvae)
        disc = PatchDiscriminator(cfg.rqvae.in_channels, cfg.stage1.loss.disc_ndf, cfg.stage1.loss.disc_layers)
    # Counted as the reference does: its codebook is an nn.Embedding weight with one padding row.
    codebook = sum(b.embed.numel() + b.dim for b in model.quantizer.codebooks)
    return {"params_total": _count(model) + codebook, "params_encoder": _count(model.encoder),
            "params_decoder": _count(model.decoder), "params_codebook": codebook, "params_discriminator": _count(disc)}


def plan(cfg: Config) -> dict:
    counts = stage2_params(cfg) if cfg.stage == "stage2" else stage1_params(cfg)
    return {"stage": cfg.stage, "run": cfg.run.name, **counts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rqscale.plan", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        cfg = load(args.config, args.overrides, check_files=False)
    except ConfigError as exc:
        print(f"rqscale: config error: {exc}", file=sys.stderr)
        return 2
    report = plan(cfg)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>28}: {value:,}" if isinstance(value, int) else f"{key:>28}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
