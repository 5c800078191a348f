"""The end-of-run numbers of a stage-1 run: held-out MSE before/after, per depth, codebook usage."""
from __future__ import annotations

from typing import Optional

from rqscale.eval import coarse_to_fine


def stage1_summary(engines, extra: dict, picture: Optional[str]) -> dict:
    before = extra.get("eval_before") or {"mse_depth": [float("nan")]}
    after = coarse_to_fine(engines.task.rqvae, engines.held_out_images())
    last = extra.get("last", {})
    return {
        "eval_mse_before": before["mse_depth"][-1],
        "eval_mse_after": after["mse_depth"][-1],
        "mse_reduction": before["mse_depth"][-1] / max(after["mse_depth"][-1], 1e-12),
        "mse_by_depth": after["mse_depth"],
        "codebook_usage": after["codebook_usage"],
        "train_recon_first_step": extra.get("first_recon"),
        "train_recon_last_step": last.get("g/recon"),
        "picture": picture,
    }
