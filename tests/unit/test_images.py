"""Labelled image grids: text lands in each row's band of the left margin, the images are untouched."""
import numpy as np
import pytest
import torch
from PIL import Image

from rqscale.utils.images import save_grid, to_uint8

ROWS, COLS, SIDE, PAD, SCALE = 3, 4, 16, 2, 2


def _rows():
    gen = torch.Generator().manual_seed(0)
    return [torch.rand(COLS, 3, SIDE, SIDE, generator=gen) * 2 - 1 for _ in range(ROWS)]


def _tile(rows, i, j):
    """Tile (i, j) as save_grid should draw it: nearest-neighbour upscaled by SCALE."""
    return to_uint8(rows[i][j : j + 1])[0].repeat(SCALE, axis=0).repeat(SCALE, axis=1)


def test_labels_are_drawn_per_row_and_images_keep_their_place(tmp_path):
    rows = _rows()
    path = save_grid(rows, str(tmp_path / "grid.png"), scale=SCALE, pad=PAD,
                     labels=["input", "depth 1", "depth 2"], title="a title line")
    image = np.asarray(Image.open(path).convert("RGB"))
    grid_h, grid_w = (ROWS * (SIDE + PAD) + PAD) * SCALE, (COLS * (SIDE + PAD) + PAD) * SCALE
    top, left = image.shape[0] - grid_h, image.shape[1] - grid_w
    assert top > 0 and left > 0, "title band above and label margin left of the grid"
    for i in range(ROWS):
        y = top + (PAD + i * (SIDE + PAD)) * SCALE
        band = image[y : y + SIDE * SCALE, :left]
        assert (band < 128).any(axis=-1).sum() > 20, f"no label text in row {i}'s band"
        for j in range(COLS):
            x = left + (PAD + j * (SIDE + PAD)) * SCALE
            assert np.array_equal(image[y : y + SIDE * SCALE, x : x + SIDE * SCALE], _tile(rows, i, j))
    assert (image[:top] < 128).any(), "no title text"


def test_label_count_mismatch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="2 labels for 3 rows"):
        save_grid(_rows(), str(tmp_path / "grid.png"), labels=["input", "depth 1"])


def test_no_labels_keeps_the_plain_grid(tmp_path):
    """rqscale.sample's call (no labels, no title) still writes exactly the bare grid."""
    rows = _rows()
    image = np.asarray(Image.open(save_grid(rows, str(tmp_path / "g.png"), pad=PAD)).convert("RGB"))
    assert image.shape == (ROWS * (SIDE + PAD) + PAD, COLS * (SIDE + PAD) + PAD, 3)
    assert np.array_equal(image[PAD : PAD + SIDE, PAD : PAD + SIDE], to_uint8(rows[0][:1])[0])


def test_tiny_images_are_scaled_up_until_labels_fit(tmp_path):
    rows = [torch.zeros(2, 3, 4, 4)] * 2  # 6 px rows: far too short for legible text
    image = Image.open(save_grid(rows, str(tmp_path / "g.png"), labels=["a", "b"]))
    assert image.height >= 2 * 24
