"""The DQ-VAE against fixed-grain VQ at about its code budget (issue 15; the paper's claim: dynamic grains
reconstruct better than fixed ones for the same number of codes), measured in one run on the debug digits.

Four stage-1 models, the same steps, batch, width, codebook and recipe (configs/debug/dq_stage1_digits.yaml),
trained in this process on the same data:
  - the DQ-VAE: 2 x 2 regions of 16 x 16 pixels, each 1 or 4 codes, r_f 0.5 -> about 10 codes an image, once
    with the paper's learned router and once with the authors' entropy router (rqvae.dq.router);
  - fixed-grain VQ at F = 16 (the RQ-VAE with D = 1, 2 x 2 codes: 4) and at F = 8 (4 x 4 codes: 16).
No fixed grid has 10 codes, so the two VQ models bracket the DQ-VAE's budget; their error is interpolated
linearly in log(codes) to the DQ-VAE's mean count. Each family keeps its own reconstruction loss (L1 for the
DQ-VAE, as the reference; MSE for the RQ-VAE, as A.3). Scored on the last 400 digits: MSE in [-1, 1], and the
share an independent classifier reads as their digit (rqscale/eval/digit_fidelity.py).
"""
from __future__ import annotations

import json
import math
import tempfile

import torch

from rqscale.bench.common import machine

CONFIG = "configs/debug/dq_stage1_digits.yaml"
DYNAMIC = ("dq", "dq_entropy")  # the DQ-VAE with the paper's learned router, and with the authors' entropy router
# Fixed-grain VQ: the RQ-VAE with one code per position (a VQ-VAE), at the DQ-VAE's two grains.
FIXED = {"vq_f16": ["rqvae.kind=rq", "rqvae.code_shape=[2,2,1]"],
         "vq_f8": ["rqvae.kind=rq", "rqvae.ch_mult=[1,1,2,2]", "rqvae.code_shape=[4,4,1]"]}


def _trained(name: str, overrides: list, steps: int, out: str):
    from rqscale.config import load
    from rqscale.models import build_stage1_model
    from rqscale.train.in_process import run

    cfg = load(CONFIG, [f"run.output_dir={out}", f"run.name={name}", f"train.max_steps={steps}", "train.num_workers=1", *overrides])
    summary = run(cfg, log=lambda line: None)
    model = build_stage1_model(cfg.rqvae).eval()
    model.load_state_dict(torch.load(summary["weights"], map_location="cpu", weights_only=True))
    return model


@torch.no_grad()
def _score(model, images: torch.Tensor, labels: torch.Tensor) -> dict:
    from rqscale.eval.digit_fidelity import digit_fidelity
    from rqscale.models.dqvae import codes_per_image
    from rqscale.utils.images import to_uint8

    if model.cfg.kind == "dq":
        codes, grain = model.encode_with_grain(images)
        counts = codes_per_image(grain).float()
    else:
        codes = model.encode(images)
        counts = torch.full((images.shape[0],), float(codes[0].numel()))
    recon = model.decode_codes(codes).clamp(-1, 1)
    return {"codes_per_image": counts.mean().item(), "codes_std": counts.std(unbiased=False).item(),
            "mse": torch.mean((recon - images) ** 2).item(), "fidelity": digit_fidelity(to_uint8(recon), labels.numpy())}


def _at_budget(low: dict, high: dict, codes: float, key: str) -> float:
    """`key` of the fixed-grain VQ interpolated linearly in log(codes) to `codes`."""
    t = (math.log(codes) - math.log(low["codes_per_image"])) / (math.log(high["codes_per_image"]) - math.log(low["codes_per_image"]))
    return low[key] + t * (high[key] - low[key])


def run(steps: int = 300, held_out: int = 400) -> dict:
    from rqscale.data import digits

    images, labels = digits(32)
    images, labels = images[-held_out:], labels[-held_out:]
    with tempfile.TemporaryDirectory(prefix="rqscale-bench-dq-budget-") as out:
        rows = {name: _score(_trained(name, overrides, steps, out), images, labels) for name, overrides in _arms().items()}
    low, high = rows["vq_f16"], rows["vq_f8"]
    at_budget = {name: {key: _at_budget(low, high, rows[name]["codes_per_image"], key) for key in ("mse", "fidelity")}
                 for name in DYNAMIC}
    return {"benchmark": "dq-budget", "machine": machine(), "config": CONFIG, "steps": steps, "held_out": held_out,
            "models": rows, "fixed_vq_at_dq_budget": at_budget,
            "dq_mse_vs_fixed": {name: rows[name]["mse"] / at_budget[name]["mse"] for name in DYNAMIC}}


def _arms() -> dict:
    """The two DQ-VAE routers (the entropy threshold calibrated on the training digits by data_prep.entropy's
    own function), then the fixed grains."""
    from data_prep.entropy import DEFAULT_SAMPLES, calibrate

    threshold = calibrate(CONFIG, ["rqvae.dq.router=entropy"], DEFAULT_SAMPLES)["threshold"]
    return {"dq": [], "dq_entropy": ["rqvae.dq.router=entropy", f"rqvae.dq.entropy_threshold={threshold}"], **FIXED}


def report(r: dict) -> str:
    lines = [f"dq-budget  {r['config']}  {r['steps']} steps each, scored on {r['held_out']} held-out digits",
             f"  machine: {r['machine']}"]
    for name, row in r["models"].items():
        lines.append(f"  {name:7s} {row['codes_per_image']:5.2f} +- {row['codes_std']:.2f} codes/image   MSE {row['mse']:.4f}   "
                     f"read as their digit {row['fidelity']:.1%}")
    for name in DYNAMIC:
        fixed = r["fixed_vq_at_dq_budget"][name]
        lines.append(f"  {name}: fixed-grain VQ interpolated to its {r['models'][name]['codes_per_image']:.2f} codes: MSE "
                     f"{fixed['mse']:.4f}, read {fixed['fidelity']:.1%}; {name} MSE / fixed-grain MSE "
                     f"{r['dq_mse_vs_fixed'][name]:.3f} (< 1: dynamic grains win)")
    return "\n".join(lines) + "\n" + json.dumps(r)
