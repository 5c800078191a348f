"""Stage-1 helpers shared by the engine path and the tools: initial weights, the Fig. 5 picture.

The training step itself is rqscale/train/stage1_engine.py."""
from __future__ import annotations

import torch

from rqscale.config import ConfigError
from rqscale.data.file_cache import local_copy
from rqscale.utils.images import save_grid

ENTROPY_KEY = "router.threshold_micro_nats"  # the DQ-VAE's entropy router (rqscale/models/dqvae.py)


def load_init_weights(module: torch.nn.Module, path: str, key: str) -> None:
    state = torch.load(local_copy(path), map_location="cpu", weights_only=True)  # s3://: this node's cached copy
    holds_dq, wants_dq = any(k.startswith("router.") for k in state), hasattr(module, "router")
    if holds_dq != wants_dq:  # the other stage-1 family: say which, not just which tensors differ
        held, kind = ("a DQ-VAE", "dq") if holds_dq else ("an RQ-VAE", "rq")
        raise ConfigError(key, f"'{path}' holds {held}, but the config builds {'a DQ-VAE' if wants_dq else 'an RQ-VAE'}",
                          f"set rqvae.kind={kind} (a DQ-VAE's codes are read by stage2.model.kind=dq only), or pick the other file")
    holds_entropy, wants_entropy = ENTROPY_KEY in state, hasattr(getattr(module, "router", None), "threshold_micro_nats")
    if holds_dq and holds_entropy != wants_entropy:  # the DQ-VAE's other router
        held, built = ("entropy", "feature") if holds_entropy else ("feature", "entropy")
        raise ConfigError(key, f"'{path}' holds a DQ-VAE with the {held} router, but the config builds the {built} router",
                          f"set rqvae.dq.router={held}, or pick the other file")
    if holds_entropy and wants_entropy:
        _check_same_threshold(state[ENTROPY_KEY], getattr(module.router, "threshold_micro_nats"), path, key)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(key, f"'{path}' does not match this model (missing {missing[:3]}, unexpected {unexpected[:3]})",
                          "use a checkpoint trained with the same rqvae.* settings")


def _check_same_threshold(held: torch.Tensor, configured: torch.Tensor, path: str, key: str) -> None:
    """The weights' entropy threshold would replace the config's: refused when the config set another one
    (-1: the config sets none, as a stage-2 config, and the weights' is taken)."""
    if int(configured) >= 0 and int(held) != int(configured):
        raise ConfigError("rqvae.dq.entropy_threshold", f"is {int(configured) / 1e6:.6f}, but '{path}' ({key}) was "
                          f"trained with {int(held) / 1e6:.6f}", f"set rqvae.dq.entropy_threshold={int(held) / 1e6:.6f}, "
                          "or train from scratch to use another threshold")


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


@torch.no_grad()
def grain_picture(model, images: torch.Tensor, path: str) -> str:
    """The DQ-VAE's picture (the paper's Figs. 2-3): inputs, reconstructions, and the inputs with their
    finely coded regions outlined in red, so a person sees where the codes went."""
    from rqscale.models.dqvae import codes_per_image

    model.eval()
    codes, grain = model.encode_with_grain(images)
    rows = [images, model.decode_codes(codes), outlined(images, grain)]
    model.train()
    count, share = codes_per_image(grain).float().mean(), grain.float().mean()
    labels = ["input", "reconstruction", "fine regions"]
    title = (f"DQ-VAE reconstructions and grain map\n{float(count):.0f} codes per image on average; "
             f"{float(share):.0%} of the regions coded finely (outlined in red)")
    return save_grid(rows, path, scale=max(1, 128 // images.shape[-1]), labels=labels, title=title)


def outlined(images: torch.Tensor, grain: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] with a red 1-pixel border around each region whose grain is 1 (fine)."""
    size = images.shape[-1] // grain.shape[-1]
    inside = torch.zeros(size, size, dtype=torch.bool, device=images.device)
    inside[1:-1, 1:-1] = True
    border = ~inside.repeat(grain.shape[-2], grain.shape[-1])  # every region's edge
    fine = grain.repeat_interleave(size, -2).repeat_interleave(size, -1).bool()
    red = torch.tensor([1.0, -1.0, -1.0], device=images.device).view(1, 3, 1, 1)
    return torch.where((border & fine).unsqueeze(1), red, images)
