"""FID (Heusel et al. 2017) and Inception Score (Salimans et al. 2016) through torchmetrics' own
metric classes, fed with features computed once per image (rqscale.eval.features).

The metrics get a pass-through module as their `feature` network (torchmetrics reads its
`num_features` instead of probing it with a dummy image), so one extractor pass serves FID, IS and
precision/recall, and features computed on different workers or read from the reference cache
merge by simply updating the metric chunk by chunk.
"""
from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import torch
from torch import nn


class Precomputed(nn.Module):
    """Identity on already extracted features, with the width torchmetrics asks for."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid_metric(num_features: int):
    """torchmetrics' FrechetInceptionDistance over precomputed features, in float64. Its state (sums of
    features and of their outer products, counts) adds across chunks and caches: `merge_state`."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=Precomputed(num_features), reset_real_features=False).set_dtype(torch.float64)


def fid(real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor], num_features: int) -> float:
    """FID between feature chunks (each N_i x F) of real and generated images."""
    metric = fid_metric(num_features)
    for chunk in real:
        metric.update(chunk.double(), real=True)
    for chunk in fake:
        metric.update(chunk.double(), real=False)
    return float(metric.compute())


def inception_score(logits: torch.Tensor, splits: int = 10, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of exp(E_x KL(p(y|x) || p(y))) over `splits` splits, as torchmetrics computes it.
    torchmetrics shuffles before splitting with the global RNG; a forked, seeded RNG keeps it repeatable."""
    from torchmetrics.image.inception import InceptionScore

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features")  # logits are small next to images
        metric = InceptionScore(feature=Precomputed(logits.shape[1]), splits=min(splits, logits.shape[0]))
    metric.update(logits.double())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def gaussian_stats(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) of N x F features, float64."""
    x = features.double().numpy()
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017).

    Tr (S1 S2)^(1/2) = Tr (A S2 A)^(1/2) with A = S1^(1/2): the inner matrix is symmetric PSD, so
    both roots are eigendecompositions, steadier than a general sqrtm on rank-deficient covariances."""
    a = _psd_sqrt(sigma1)
    inner = np.linalg.eigvalsh(a @ sigma2 @ a)
    tr_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
