"""Pre-extracted RQ-VAE latents in shards: the `latent.bf16` field (raw little-endian bfloat16)."""
from __future__ import annotations

import numpy as np
import torch

LATENT_FIELD = "latent.bf16"


def latent_bytes(z: torch.Tensor) -> bytes:
    return z.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().astype("<i2").tobytes()


def latent_from_bytes(data: bytes, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype="<i2").copy()).view(torch.bfloat16).view(*shape).float()
