"""Inpainting with a contextual checkpoint (supplement D.3): the picture's codes are kept outside the
region to fill, and Draft-and-Revise's partitions cover only that region.

The picture is centre-cropped to a square and resized to the model's resolution, as evaluation images
are (rqscale/data/transforms.py). The mask is a PNG of the picture's size, white (any non-zero pixel)
where the picture is to be filled; it is cropped alike, and a code position is filled when any pixel
of its cell is, so the filled region covers the mask.
"""
from __future__ import annotations

import io
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from rqscale.data.transforms import decode_image


def read_picture(path: str, flag: str = "--inpaint") -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag} file not found: '{path}'")
    with open(path, "rb") as f:
        return f.read()


def read_mask(mask_path: str, picture_path: str) -> np.ndarray:
    """(H, W) bool, True where the picture is to be filled; its size checked against the picture's."""
    with Image.open(io.BytesIO(read_picture(mask_path, "--mask"))) as mask, Image.open(io.BytesIO(read_picture(picture_path))) as picture:
        if mask.size != picture.size:
            raise ValueError(f"--mask '{mask_path}' is {mask.size[0]}x{mask.size[1]} but the --inpaint picture is "
                             f"{picture.size[0]}x{picture.size[1]}: give a mask of the picture's size (white = fill)")
        filled = np.asarray(mask.convert("L")) > 0
    if not filled.any():
        raise ValueError(f"--mask '{mask_path}' marks nothing to fill: paint the region white (non-zero)")
    if filled.all():
        raise ValueError(f"--mask '{mask_path}' covers the whole picture: nothing would be kept (sample without --inpaint)")
    return filled


def code_region(filled: np.ndarray, grid: tuple) -> torch.Tensor:
    """(h * w,) bool: the code positions of an (h, w) grid with any filled pixel, after the centre crop."""
    height, width = filled.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = torch.from_numpy(filled[top : top + side, left : left + side]).float()[None, None]
    return F.adaptive_max_pool2d(square, grid).flatten() > 0


def fitted_to_region(schedule, region: torch.Tensor):
    """The schedule with at most one group per position to fill: a mask leaving fewer positions than
    T_draft (or T_revise) groups fills one position a step (the paper, silent on T for inpainting, uses
    partitions of the region, D.3), with a warning naming the flag."""
    from dataclasses import replace

    size = int(region.sum(dim=1).min())
    fitted = replace(schedule, draft_steps=min(schedule.draft_steps, size), revise_steps=min(schedule.revise_steps, size))
    for flag, asked, used in (("--draft-steps", schedule.draft_steps, fitted.draft_steps),
                              ("--revise-steps", schedule.revise_steps, fitted.revise_steps)):
        if used < asked:
            print(f"rqscale: warning: the mask leaves {size} positions to fill; {flag} {asked} becomes {used} "
                  "(one position a step)", file=sys.stderr)
    return fitted


def inpainting_inputs(request, cfg, rqvae, count: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(known codes (count, N, D) of the picture, region (count, N) bool to fill) for `count` samples."""
    h, w, d = cfg.rqvae.code_shape
    filled = read_mask(request.inpaint_mask, request.inpaint_image)
    region = code_region(filled, (h, w))
    picture = decode_image(read_picture(request.inpaint_image), cfg.rqvae.resolution, None).unsqueeze(0)
    codes = rqvae.encode(picture.to(device)).reshape(1, h * w, d)
    return codes.expand(count, -1, -1).contiguous(), region.expand(count, -1).contiguous()
