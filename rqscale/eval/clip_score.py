"""CLIP similarity of text-conditional samples (Hessel et al. 2021; Table 3 and Fig. 22 use ViT-B/32)
with a CLIP model read from a local directory only: the CLIP score of evaluation and the scorer of
CLIP re-ranking (rqscale.sampling.rerank) are the same per-image cosine.

Table 3 reports the mean raw cosine between image and caption embeddings (0.26 on CC-3M): the
report's `clip_cosine`. `clip_score` is torchmetrics' CLIPScore convention on the same cosines,
100 * max(mean cosine, 0). The model directory is what transformers' `save_pretrained` writes for a
CLIPModel and its CLIPProcessor (tokenizer and image processor files); nothing is downloaded.
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
    (projected embeddings in `pooler_output`)."""

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
def clip_model(path: str, device: str):
    """(embedding model, processor) of a local CLIP directory, loaded once per process and device."""
    model, processor = _load_local(path)
    return model.to(device), processor


@torch.no_grad()
def clip_cosines(path: str, images: torch.Tensor, captions: list[str], device: str, batch_size: int = 64) -> torch.Tensor:
    """cos(CLIP image embedding, CLIP caption embedding) per image: uint8 (N, 3, H, W) and N captions ->
    (N,) float32 on the CPU. Captions longer than CLIP's context are cut to it."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    return torch.cat([_cosines(path, images[s : s + batch_size], captions[s : s + batch_size], device)
                      for s in range(0, len(images), batch_size)])


def _cosines(path: str, images: torch.Tensor, captions: list[str], device: str) -> torch.Tensor:
    model, processor = clip_model(path, device)
    length = model.config.text_config.max_position_embeddings
    inputs = processor(text=list(captions), images=[i.cpu() for i in images], return_tensors="pt", padding=True,
                       truncation=True, max_length=length)
    image = model.get_image_features(pixel_values=inputs["pixel_values"].to(device))
    text = model.get_text_features(input_ids=inputs["input_ids"].to(device), attention_mask=inputs["attention_mask"].to(device))
    return torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1).cpu()


def clip_score_sum(path: str, images: torch.Tensor, captions: list[str], device: str) -> tuple[float, int]:
    """(sum of per-image cosines, count): the state of one evaluation chunk, which adds across chunks."""
    cosines = clip_cosines(path, images, captions, device)
    return float(cosines.sum()), len(cosines)


def merge_clip(sums: list[float], counts: list[int]) -> dict:
    """The mean raw cosine (Table 3's CLIP score) and torchmetrics' 100 * max(mean, 0) over all chunks."""
    cosine = sum(sums) / max(sum(counts), 1)
    return {"clip_cosine": cosine, "clip_score": 100.0 * max(cosine, 0.0)}
