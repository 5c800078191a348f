"""LPIPS perceptual loss (Zhang et al. 2018) through the `lpips` package, weight 1.0 in A.3.

The linear heads ship inside the lpips wheel. The VGG-16 backbone is torchvision's, which this
code never downloads: it is read from a local file, and a missing file is an error naming it.
A random backbone is allowed only when asked for explicitly (tests).
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn


class MissingWeightsError(FileNotFoundError):
    """A weights file the config names is not on disk; the message names it."""


def build_lpips(backbone_path: str | None, random_backbone: bool = False) -> nn.Module:
    """A frozen LPIPS(VGG) module taking images in [-1, 1] and returning per-image distances."""
    import lpips  # heavy import kept local: only stage 1 needs it

    if not random_backbone and (backbone_path is None or not os.path.isfile(backbone_path)):
        raise MissingWeightsError(
            f"LPIPS backbone weights not found: '{backbone_path}'. Put torchvision's VGG-16 state dict "
            "(vgg16-397923af.pth) there, or set stage1.loss.lpips_random_backbone=true for tests."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's 'pretrained' deprecation notice
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if not random_backbone:
        load_vgg_backbone(model.net, backbone_path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_vgg_backbone(net: nn.Module, path: str) -> None:
    """Copy torchvision `features.<i>.*` tensors into lpips' `slice<n>.<i>.*` layout."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in state:
        state = state["state_dict"]
    mapped = {}
    for name in net.state_dict():
        source = "features." + name.split(".", 1)[1]
        if source not in state:
            raise MissingWeightsError(f"'{path}' lacks tensor '{source}': is it a torchvision VGG-16 state dict?")
        mapped[name] = state[source]
    net.load_state_dict(mapped)


def perceptual_loss(lpips_model: nn.Module, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS distance over the batch (ref: loss_pcpt is a batch mean)."""
    return lpips_model(images.float(), reconstructions.float()).mean()
