"""CLIP score of text-conditional samples (Hessel et al. 2021; Table 3 and Fig. 22 use ViT-B/32),
through torchmetrics' CLIPScore with a CLIP model read from a local directory only.

torchmetrics reports 100 * max(mean cosine, 0) between the image and caption embeddings; the paper
plots the raw cosine (about 0.26 on CC-3M), which the report gives as well. The model directory is
what transformers' `save_pretrained` writes for a CLIPModel and its CLIPProcessor (tokenizer and
image processor files); nothing is downloaded.
"""
from __future__ import annotations

import functools
import os

import torch
from torch import nn


def check_clip_dir(path: str) -> str:
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"CLIP model not found: '{path}' has no config.json. --clip-model wants a local directory holding a "
            "transformers CLIPModel and its CLIPProcessor (save_pretrained of both, e.g. openai/clip-vit-base-patch32 "
            "copied from a machine with network access); nothing is downloaded")
    return path


class _Embeddings(nn.Module):
    """CLIPModel whose get_*_features return plain tensors: transformers 5 returns an output object
    (projected embeddings in `pooler_output`), which torchmetrics 1.9 cannot normalise."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip, self.config = clip, clip.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return _tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return _tensor(self.clip.get_text_features(*args, **kwargs))


def _tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _load_local(path: str):
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(check_clip_dir(path), local_files_only=True)
    return _Embeddings(model).eval(), CLIPProcessor.from_pretrained(path, local_files_only=True)


@functools.lru_cache(maxsize=1)
def clip_metric(path: str, device: str):
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=functools.partial(_load_local, path)).to(device)


@torch.no_grad()
def clip_score_sum(path: str, images: torch.Tensor, captions: list[str], device: str) -> tuple[float, int]:
    """(sum over images of 100 * cos(image, caption), count): CLIPScore's state, which adds across chunks."""
    metric = clip_metric(path, device)
    metric.reset()
    metric.update(images.to(device), captions)
    return float(metric.score), int(metric.n_samples)


def merge_clip(sums: list[float], counts: list[int]) -> dict:
    """CLIPScore.compute over merged states: max(sum / n, 0), and the raw cosine the paper plots."""
    score = max(sum(sums) / max(sum(counts), 1), 0.0)
    return {"clip_score": score, "clip_cosine": score / 100.0}
