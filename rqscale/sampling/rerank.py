"""CLIP re-ranking (B.5, Fig. 22): for each caption, the best of N sampled candidates by CLIP similarity.

Candidates are drawn exactly as N samples of that caption would be (the captions repeated N times in
place, the same seed and batches), scored with the same per-image cosine as evaluation's CLIP score
(rqscale.eval.clip_score, a local CLIP model), and the highest-scoring one of each group is kept.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def repeated(captions: Sequence[str], n: int) -> tuple:
    """Each caption n times in place: the candidates' captions, in groups of n."""
    return tuple(c for c in captions for _ in range(n))


def best_of(images: torch.Tensor, captions: Sequence[str], n: int, score: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """(the best image of each group of n, its score): images (G * n, ...) whose captions come in groups
    of n; `score(uint8 images, captions) -> (G * n,)` similarities. Ties go to the first candidate."""
    if len(images) % n:
        raise ValueError(f"{len(images)} candidates do not form groups of {n}")
    scores = score(images, list(captions)).view(-1, n)
    best = scores.argmax(dim=1)
    rows = torch.arange(len(best)) * n + best
    return images[rows], scores.gather(1, best.unsqueeze(1)).squeeze(1)


def clip_scorer(clip_dir: str, device: str) -> Callable:
    """score(images in [-1, 1], captions) -> CLIP cosines, for best_of."""
    from rqscale.eval.clip_score import clip_cosines
    from rqscale.eval.features import to_uint8_images

    return lambda images, captions: clip_cosines(clip_dir, to_uint8_images(images), captions, device)
