"""Rejection sampling with a classifier (Sec. 4.2, Table 2): keep the candidates the classifier finds
most likely to be their class, so that `acceptance_rate` of all candidates is accepted."""
from __future__ import annotations

import math
import os
import warnings

import torch


def load_classifier(path: str, device: str = "cpu") -> torch.nn.Module:
    """A classifier taking images in [-1, 1], (N, 3, H, W) -> logits (N, classes): a torch.export
    program (.pt2) or a TorchScript file (e.g. a scripted ResNet-101, as in Table 2)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"classifier checkpoint not found: '{path}' (a .pt2 torch.export program or a TorchScript file)")
    if path.endswith(".pt2"):
        return torch.export.load(path).module().to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript still loads; export is the future path
        return torch.jit.load(path, map_location=device).eval()


def candidates_needed(count: int, acceptance_rate: float) -> int:
    if not 0.0 < acceptance_rate <= 1.0:
        raise ValueError(f"acceptance rate must be in (0, 1], got {acceptance_rate}")
    return math.ceil(count / acceptance_rate)


@torch.no_grad()
def select(images: torch.Tensor, labels: torch.Tensor, classifier: torch.nn.Module, keep: dict) -> torch.Tensor:
    """Indices of the accepted images: for each label, the `keep[label]` with highest p(label | x)."""
    probs = torch.cat([classifier(chunk).softmax(dim=-1) for chunk in images.split(64)])
    score = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    chosen = []
    for label, count in keep.items():
        idx = (labels == label).nonzero().squeeze(1)
        chosen.append(idx[score[idx].argsort(descending=True)[:count]])
    return torch.cat(chosen).sort().values
