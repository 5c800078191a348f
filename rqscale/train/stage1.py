"""Stage-1 helpers shared by the engine path and the tools: initial weights, the Fig. 5 picture.

The training step itself is rqscale/train/stage1_engine.py."""
from __future__ import annotations

import torch

from rqscale.config import ConfigError
from rqscale.data.file_cache import local_copy
from rqscale.utils.images import save_grid

def load_init_weights(module: torch.nn.Module, path: str, key: str) -> None:
    state = torch.load(local_copy(path), map_location="cpu", weights_only=True)  # s3://: this node's cached copy
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(key, f"'{path}' does not match this RQ-VAE (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          "use a checkpoint trained with the same rqvae.* settings")


@torch.no_grad()
def reconstruction_picture(model, images: torch.Tensor, path: str) -> str:
    """Originals, then G(Z^(d)) for d = 1..D: the coarse-to-fine rows of Fig. 5, each row labelled."""
    model.eval()
    codes = model.encode(images)
    depth = model.cfg.code_shape[2]
    rows = [images] + [model.decode_codes(codes, depth=d) for d in range(1, depth + 1)]
    model.train()
    # The title says "first d codes" so nobody reads row "depth d" as code d decoded alone.
    labels = ["input"] + [f"depth {d}" for d in range(1, depth + 1)]
    title = f"RQ-VAE reconstructions, coarse to fine\ninput, then decoded from the first d codes (d = 1..{depth})"
    return save_grid(rows, path, scale=max(1, 128 // images.shape[-1]), labels=labels, title=title)
