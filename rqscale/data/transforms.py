"""Per-sample image work: JPEG decode with reduce-on-decode, resize, crop and flip (A.3 / ref:
resize the shorter side to R, random R x R crop and horizontal flip for training; centre crop for eval)."""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode_image(data: bytes, resolution: int, rng: np.random.Generator | None) -> torch.Tensor:
    """JPEG/PNG bytes -> (3, R, R) float in [-1, 1]. `rng` None: deterministic centre crop, no flip."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (resolution, resolution))  # JPEG: decode at 1/2, 1/4, 1/8 scale when large enough
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    image = image.resize(size, Image.BILINEAR)
    left, top = _crop_origin(size, resolution, rng)
    array = np.asarray(image, dtype=np.uint8)[top : top + resolution, left : left + resolution]
    if rng is not None and rng.random() < 0.5:
        array = array[:, ::-1]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def _crop_origin(size: tuple, resolution: int, rng) -> tuple:
    w, h = size
    if rng is None:
        return (w - resolution) // 2, (h - resolution) // 2
    return int(rng.integers(0, w - resolution + 1)), int(rng.integers(0, h - resolution + 1))
