"""Where a trained DQ-VAE's router spends its fine codes (issue 15; the paper's Figs. 2-3 show fine regions
on detail): the Spearman correlation between each region's fine assignment (the router's argmax) and its
pixel variance on held-out images, and the reconstruction error when the same share of regions is coded
finely by the router, by highest variance, and by lowest variance (the codes re-quantized, the model's
decoder unchanged).

  python -m rqscale.bench dq-detail --config configs/debug/dq_stage1.yaml --weights runs/debug-dq-stage1/rqvae.pt
"""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from rqscale.bench.common import machine

REGION = 16  # pixels per region side (F = 16)


def held_out(cfg, count: int) -> torch.Tensor:
    """Images the debug runs never drew: the last `count` digits, or photo crops from another seed."""
    from rqscale.data import digits, photo_crops

    if cfg.data.bundled_set == "digits":
        return digits(cfg.rqvae.resolution)[0][-count:]
    return photo_crops(cfg.rqvae.resolution, count, seed=1234)[0]


def region_variance(images: torch.Tensor) -> torch.Tensor:
    """(B, h, w) pixel variance of each 16 x 16 region, over its pixels and channels."""
    b = images.shape[0]
    regions = images.unfold(2, REGION, REGION).unfold(3, REGION, REGION)  # (B, 3, h, w, 16, 16)
    h, w = regions.shape[2:4]
    return regions.permute(0, 2, 3, 1, 4, 5).reshape(b, h, w, -1).var(dim=-1)


@torch.no_grad()
def forced_error(model, images: torch.Tensor, grain: torch.Tensor) -> float:
    """MSE of the reconstruction with the given grain map (1 = fine) in place of the router's."""
    from rqscale.models.dqvae import assemble

    fine, coarse = model.encoder(images)
    z = model.quant_conv(assemble(fine, coarse, F.one_hot(grain, 2).to(fine.dtype))).permute(0, 2, 3, 1)
    recon = model.decode_latents(model.quantizer(z).z_q).clamp(-1, 1)
    return F.mse_loss(recon, images).item()


@torch.no_grad()
def run(config: str, weights: str, count: int = 200) -> dict:
    from scipy.stats import spearmanr

    from rqscale.config import load
    from rqscale.models import build_stage1_model

    cfg = load(config, check_files=False)
    model = build_stage1_model(cfg.rqvae).eval()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    images = held_out(cfg, count)
    _, grain = model.encode_with_grain(images)
    variance = region_variance(images)
    rho, p = spearmanr(variance.flatten().numpy(), grain.flatten().numpy())
    ranked = variance.flatten().argsort(descending=True)
    n_fine = int(grain.sum())
    by_rank = lambda top: torch.zeros(grain.numel(), dtype=torch.long).index_fill_(0, ranked[:n_fine] if top else ranked[-n_fine:], 1)  # noqa: E731
    errors = {"router": forced_error(model, images, grain),
              "highest_variance_fine": forced_error(model, images, by_rank(True).view_as(grain)),
              "lowest_variance_fine": forced_error(model, images, by_rank(False).view_as(grain))}
    return {"benchmark": "dq-detail", "machine": machine(), "config": config, "weights": weights, "images": count,
            "fine_share": grain.float().mean().item(), "spearman": float(rho), "p_value": float(p), "mse_by_grain_map": errors}


def report(r: dict) -> str:
    e = r["mse_by_grain_map"]
    lines = [f"dq-detail  {r['config']}  {r['weights']}  {r['images']} held-out images, fine share {r['fine_share']:.3f}",
             f"  Spearman(region variance, fine) = {r['spearman']:.3f} (p = {r['p_value']:.2g}); > 0: fine codes go to detail",
             f"  MSE with the same share fine, chosen by the router {e['router']:.4f}, by highest variance "
             f"{e['highest_variance_fine']:.4f}, by lowest variance {e['lowest_variance_fine']:.4f}"]
    return "\n".join(lines) + "\n" + json.dumps(r)
