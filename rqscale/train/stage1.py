"""Stage-1 helpers shared by the engine path and the tools: initial weights, the Fig. 5 picture.

The training step itself is rqscale/train/stage1_engine.py."""
from __future__ import annotations

import torch

from rqscale.config import ConfigError
from rqscale.utils.images import save_grid

def load_init_weights(module: torch.nn.Module, path: str, key: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(key, f"'{path}' does not match this RQ-VAE (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          "use a checkpoint trained with the same rqvae.* settings")


@torch.no_grad()
def reconstruction_picture(model, images: torch.Tensor, path: str) -> str:
    """Originals, then G(Z^(d)) for d = 1..D: the coarse-to-fine rows of Fig. 5."""
    model.eval()
    codes = model.encode(images)
    rows = [images] + [model.decode_codes(codes, depth=d) for d in range(1, model.cfg.code_shape[2] + 1)]
    model.train()
    return save_grid(rows, path, scale=max(1, 128 // images.shape[-1]))
