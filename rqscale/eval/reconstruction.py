"""Reconstruction metrics of an RQ-VAE: MSE of G(Z^(d)) per depth (Table A.2 / C.1) and codebook usage."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rqscale.models import RQVAE


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
        codes = model.encode(x)
        used[codes.flatten().cpu()] = True
        for d in range(depth):
            recon = model.decode_codes(codes, depth=d + 1)
            sq_err[d] += F.mse_loss(recon.float(), x.float(), reduction="sum").double().cpu()
    model.train(was_training)
    mse = (sq_err / images.numel()).tolist()
    return {"mse_depth": mse, "codebook_usage": used.float().mean().item()}
