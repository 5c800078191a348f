"""Pixel entropy of each 16 x 16 region, the signal of the DQ-VAE's entropy router (rqvae.dq.router=entropy).

Following the authors' code (R: CrossmodalGroup/DynamicVectorQuantization, models/stage1_dynamic/
dqvae_dual_entropy.py, class Entropy, after their README's update): the image in [-1, 1] is turned to grey
(ITU-R 601 weights), each region's pixels are smoothed into a 32-bin histogram over [-1, 1] by a Gaussian
kernel of width 0.01, and the region's entropy is that histogram's, in nats. A flat region scores near 0,
a textured one up to log 32.
"""
from __future__ import annotations

import torch

REGION = 16  # pixels per region side: the coarse grain (F = 16)
BINS = 32  # R: torch.linspace(-1, 1, 32)
SIGMA = 0.01  # R: the kernel's width
EPS = 1e-40  # R: added to the normaliser and to every bin, so empty bins contribute 0 log 0 = 0
GREY = (0.2989, 0.5870, 0.1140)  # R: ITU-R 601 luma


def region_entropy(images: torch.Tensor) -> torch.Tensor:
    """(B, H / 16, W / 16) fp32 entropy of each region of `images` (B, C, H, W) in [-1, 1] (C = 3, or 1: grey)."""
    x = images.float()
    grey = x[:, :1] if x.shape[1] == 1 else sum(w * x[:, c : c + 1] for c, w in enumerate(GREY))
    b, _, h, w = grey.shape
    pixels = grey.unfold(2, REGION, REGION).unfold(3, REGION, REGION).reshape(b, h // REGION, w // REGION, -1)
    bins = torch.linspace(-1, 1, BINS, device=x.device)
    pdf = torch.exp(-0.5 * ((pixels.unsqueeze(-1) - bins) / SIGMA).pow(2)).mean(dim=-2)
    pdf = pdf / (pdf.sum(dim=-1, keepdim=True) + EPS) + EPS
    return -torch.special.xlogy(pdf, pdf).sum(dim=-1)  # 0 log 0 = 0 even where subnormal EPS flushes to 0


def entropy_threshold(entropies: torch.Tensor, fine_ratio: float) -> float:
    """The region entropy above which a share `fine_ratio` of these regions lies: their (1 - r_f) quantile
    (R: calculate_entropy_thresholds.py's percentile table, read at 100 - 100 r_f)."""
    return torch.quantile(entropies.flatten().double(), 1.0 - fine_ratio).item()


def threshold_table(entropies: torch.Tensor) -> dict:
    """{percent: threshold} for 1..99, R's JSON layout: a share (100 - percent)% of regions lies above each."""
    q = torch.quantile(entropies.flatten().double(), torch.arange(1, 100, dtype=torch.float64) / 100)
    return {str(p): v for p, v in zip(range(1, 100), q.tolist())}
