"""Per-sample image work (A.3 / ref): resize the shorter side to R, random R x R crop and horizontal
flip for training, centre crop for evaluation.

Done in the cheaper but equivalent order: the R x R crop of the resized image is the square of side
min(H, W) of the original, so we crop that square first and resize only it (antialiased bilinear on
uint8, channels-last). Large JPEGs (shorter side >= 2R) are reduced while decoding (libjpeg DCT
scaling through PIL's draft mode); others are decoded by torchvision's libjpeg-turbo / libpng path.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_image as tv_decode


def _decode_uint8(data: bytes, resolution: int) -> torch.Tensor:
    """(3, H, W) uint8, reduced on decode when the image is at least twice the target size."""
    head = Image.open(io.BytesIO(data))
    if head.format == "JPEG" and min(head.size) >= 2 * resolution:
        head.draft("RGB", (resolution, resolution))
        return torch.from_numpy(np.asarray(head.convert("RGB"))).permute(2, 0, 1)
    return tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def decode_image(data: bytes, resolution: int, rng: np.random.Generator | None) -> torch.Tensor:
    """Image bytes -> (3, R, R) float in [-1, 1]. `rng` None: centre crop, no flip."""
    return to_unit_range(decode_image_uint8(data, resolution, rng))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]; one pass over a whole batch is cheaper than per image."""
    return images.float().div_(127.5).sub_(1.0)


def decode_image_uint8(data: bytes, resolution: int, rng: np.random.Generator | None, flip: bool = True) -> torch.Tensor:
    """Image bytes -> (3, R, R) uint8, cropped and flipped as decode_image (`flip` False: random crop only)."""
    x = _decode_uint8(data, resolution)
    h, w = x.shape[1:]
    side = min(h, w)
    top, left = _crop_origin(h - side, w - side, rng)
    square = x[:, top : top + side, left : left + side].unsqueeze(0).contiguous(memory_format=torch.channels_last)
    if side != resolution:
        square = F.interpolate(square, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    image = square[0]
    if rng is not None and rng.random() < 0.5 and flip:  # the draw is made either way: same crops with or without
        image = image.flip(-1)
    return image.contiguous()


def _crop_origin(slack_h: int, slack_w: int, rng) -> tuple:
    if rng is None:
        return slack_h // 2, slack_w // 2
    return int(rng.integers(0, slack_h + 1)), int(rng.integers(0, slack_w + 1))
