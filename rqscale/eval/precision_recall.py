"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", Sec. 2), on the same features as FID.

Each set's manifold is the union of balls around its points, each ball's radius the distance to the
point's k-th nearest neighbour in its own set (k = 3 in the paper). Precision is the fraction of
generated points inside the real manifold, recall the fraction of real points inside the generated
one. Distances are computed in row chunks, so 50K x 50K never sits in memory at once.
"""
from __future__ import annotations

import torch

K_NEIGHBOURS = 3  # Kynkäänniemi et al. 2019, Sec. 2: k = 3 balances the two failure modes
ROW_CHUNK = 1024


def _distances(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return torch.cdist(rows.float(), cols.float()).clamp_min_(0)


def knn_radii(features: torch.Tensor, k: int = K_NEIGHBOURS) -> torch.Tensor:
    """Distance of each point to its k-th nearest other point (the point itself is at distance 0)."""
    if features.shape[0] <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {features.shape[0]}")
    radii = [_distances(features[i : i + ROW_CHUNK], features).kthvalue(k + 1, dim=1).values
             for i in range(0, features.shape[0], ROW_CHUNK)]
    return torch.cat(radii)


def coverage(points: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `points` inside at least one ball (manifold[j], radii[j])."""
    inside = 0
    for i in range(0, points.shape[0], ROW_CHUNK):
        inside += int((_distances(points[i : i + ROW_CHUNK], manifold) <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = K_NEIGHBOURS,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    """(precision, recall) of generated `fake` against `real` features; `real_radii` may come from a cache."""
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    fake_radii = knn_radii(fake, k)
    return coverage(fake, real, real_radii), coverage(real, fake, fake_radii)
