"""Reconstruction metrics of an RQ-VAE: MSE of G(Z^(d)) per depth (Table A.2 / C.1) and codebook usage."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rqscale.models import RQVAE


@torch.no_grad()
def depth_reconstructions(model: RQVAE, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(codes, [G(Z^(d)) for d = 1..D]): decodes of the partial sums of the first d codes (Table A.2)."""
    codes = model.encode(images)
    return codes, [model.decode_codes(codes, depth=d) for d in range(1, model.cfg.code_shape[2] + 1)]


@torch.no_grad()
def coarse_to_fine(model: RQVAE, images: torch.Tensor, batch_size: int = 64) -> dict:
    """{'mse_depth': [MSE at d=1..D], 'codebook_usage': distinct codes used / K} over `images`."""
    was_training = model.training
    model.eval()
    depth = model.cfg.code_shape[2]
    sq_err = torch.zeros(depth, dtype=torch.float64)
    used = torch.zeros(model.cfg.num_codes, dtype=torch.bool)
    for start in range(0, images.shape[0], batch_size):
        x = images[start : start + batch_size]
        codes, recons = depth_reconstructions(model, x)
        used[codes.flatten().cpu()] = True
        for d, recon in enumerate(recons):
            sq_err[d] += F.mse_loss(recon.float(), x.float(), reduction="sum").double().cpu()
    model.train(was_training)
    mse = (sq_err / images.numel()).tolist()
    return {"mse_depth": mse, "codebook_usage": used.float().mean().item()}
