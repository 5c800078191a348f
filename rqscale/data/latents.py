"""Pre-extracted RQ-VAE latents in shards: the `latent.bf16` field (raw little-endian bfloat16)."""
from __future__ import annotations

import numpy as np
import torch

LATENT_FIELD = "latent.bf16"


def latent_bytes(z: torch.Tensor) -> bytes:
    return z.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes()


def latent_from_bytes(data: bytes, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype="<i2").copy()).view(torch.bfloat16).view(*shape).float()


# Pre-extracted DQ-VAE codes (data_prep.latents of a DQ-VAE): the DQ-Transformer trains on hard codes (R), so its
# shards hold each image's codes in sequence order (its coarse regions' codes in raster order, then the codes of
# the fine regions' F = 8 positions in raster order: 256 + 3 x fine regions at 256 px, variable length) as
# little-endian uint16, and its grain map (1 byte a region, 1 = fine). The manifest's "dq_grain_shape" is (h, w).
DQ_CODES_FIELD = "dqcodes.u16"
GRAIN_FIELD = "grain.u8"


def _grain_masks(grain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coarse regions' top-left positions, fine positions), both bool on the (2h, 2w) map."""
    fine = grain.astype(bool).repeat(2, axis=0).repeat(2, axis=1)
    corner = np.zeros_like(fine)
    corner[::2, ::2] = ~grain.astype(bool)
    return corner, fine


def dq_code_bytes(codes: torch.Tensor, grain: torch.Tensor) -> tuple[bytes, bytes]:
    """(codes field, grain field) of one image: its (2h, 2w, 1) code map and (h, w) grain map."""
    code_map, grain_map = codes[..., 0].cpu().numpy(), grain.cpu().numpy().astype(np.uint8)
    if code_map.max(initial=0) >= 1 << 16:
        raise ValueError(f"code {int(code_map.max())} does not fit the shards' 16-bit field (rqvae.num_codes <= 65536)")
    corner, fine = _grain_masks(grain_map)
    ordered = np.concatenate([code_map[corner], code_map[fine]])
    return ordered.astype("<u2").tobytes(), grain_map.tobytes()


def dq_codes_from_bytes(code_data: bytes, grain_data: bytes, grain_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (2h, 2w, 1) long, grain (h, w) long) back from the two fields; ValueError when they disagree."""
    h, w = grain_shape
    if len(grain_data) != h * w:
        raise ValueError(f"grain map has {len(grain_data)} bytes, {h * w} expected for shape {(h, w)}")
    grain_map = np.frombuffer(grain_data, dtype=np.uint8).reshape(h, w)
    if grain_map.max(initial=0) > 1:
        raise ValueError("grain map holds values other than 0 and 1")
    corner, fine = _grain_masks(grain_map)
    expected = 2 * (int(corner.sum()) + int(fine.sum()))
    if len(code_data) != expected:
        raise ValueError(f"codes have {len(code_data)} bytes, {expected} expected for this grain map")
    ordered = np.frombuffer(code_data, dtype="<u2").astype(np.int64)
    per_region = np.zeros((h, w), dtype=np.int64)
    per_region[~grain_map.astype(bool)] = ordered[: int(corner.sum())]
    code_map = per_region.repeat(2, axis=0).repeat(2, axis=1)
    code_map[fine] = ordered[int(corner.sum()) :]
    return torch.from_numpy(code_map).unsqueeze(-1), torch.from_numpy(grain_map.astype(np.int64))
