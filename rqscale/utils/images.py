"""Write image grids as PNG files, optionally with a title line and a label for each row."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)  # the same white as the padding between tiles, so labels sit on the grid
INK = (30, 30, 30)
MIN_LABELLED_ROW = 24  # px per row once labels are drawn: below this a legible font would not fit


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_grid(rows: list[torch.Tensor], path: str, scale: int = 1, pad: int = 2,
              labels: Optional[Sequence[str]] = None, title: Optional[str] = None) -> str:
    """Each entry of `rows` is one row of images (N, 3, H, W); rows must share N, H, W.

    `labels` (one per row) go in a left margin, `title` in a band above; the grid itself sits in the
    bottom-right corner. Long text is word-wrapped ("\n" forces a break). With labels, tiny images
    are scaled up until a row holds legible text."""
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"save_grid got {len(labels)} labels for {len(rows)} rows: give one label per row")
    h = rows[0].shape[-2]
    if labels is not None:
        scale = max(scale, math.ceil(MIN_LABELLED_ROW / (h + pad)))
    image = _grid(rows, pad)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    if labels is not None or title:
        image = _annotate(image, (h + pad) * scale, pad * scale, labels, title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path)
    return path


def _grid(rows: list[torch.Tensor], pad: int) -> Image.Image:
    tiles = [to_uint8(r) for r in rows]
    n, h, w, _ = tiles[0].shape
    canvas = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(tiles):
        for j in range(n):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = row[j]
    return Image.fromarray(canvas)


def _font(row_height: int) -> ImageFont.ImageFont:
    """Text about a quarter of a row tall, 13-32 px; the bitmap fallback if Pillow lacks FreeType."""
    size = min(32, max(13, row_height // 4))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument: its fixed ~11 px bitmap font
        return ImageFont.load_default()


def _annotate(grid: Image.Image, row_height: int, pad: int, labels, title) -> Image.Image:
    """Paste `grid` below a title band and right of a label margin, then draw the text."""
    font = _font(row_height)
    gap = max(6, font.getbbox("M")[3] // 2)
    # Labels may take a third of the grid's width (captions), but at least ~12 characters a line.
    label_width = max(14 * gap, grid.width // 3)
    label_lines = [_wrap(label, font, label_width, row_height - pad) for label in labels or []]
    margin = max(_width(lines, font) for lines in label_lines) + 2 * gap if label_lines else 0
    title_lines = _wrap(title, font, grid.width + margin - 2 * gap, None) if title else []
    top = _height(title_lines, font) + 2 * gap if title_lines else 0
    canvas = Image.new("RGB", (grid.width + margin, grid.height + top), BACKGROUND)
    canvas.paste(grid, (margin, top))
    draw = ImageDraw.Draw(canvas)
    if title_lines:
        draw.multiline_text((gap, gap), "\n".join(title_lines), font=font, fill=INK)
    for i, lines in enumerate(label_lines):
        middle = top + pad + i * row_height + (row_height - pad) // 2  # centre of the row's images
        draw.multiline_text((gap, middle), "\n".join(lines), font=font, fill=INK, anchor="lm")
    return canvas


def _wrap(text: str, font, max_width: int, max_height: Optional[int]) -> list[str]:
    """Greedy word wrap to `max_width` px, keeping the text's own line breaks; lines that overflow
    `max_height` collapse into '...'."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        start = len(lines)
        for word in paragraph.split():
            if len(lines) > start and font.getlength(f"{lines[-1]} {word}") <= max_width:
                lines[-1] = f"{lines[-1]} {word}"
            else:
                lines.append(word)
    fits = len(lines) if max_height is None else max(1, max_height // _line_height(font))
    if len(lines) > fits:
        lines = lines[: fits - 1] + [lines[fits - 1] + " ..."]
    return lines or [""]


def _line_height(font) -> int:
    return font.getbbox("Mg")[3] + 4  # multiline_text's default spacing is 4 px


def _width(lines: list[str], font) -> int:
    return max(math.ceil(font.getlength(line)) for line in lines)


def _height(lines: list[str], font) -> int:
    return len(lines) * _line_height(font)
