"""Feature extractors for FID / IS / precision-recall, loaded from local files only.

Two kinds, both mapping uint8 images (N, 3, H, W) to (pool features N x F, logits N x C):
- the FID Inception-v3 (Heusel et al. 2017) that torchmetrics builds from torch-fidelity, with the
  weights file `pt_inception-2015-12-05-6726825d.pth` read from disk (nothing is downloaded): one
  forward pass yields the 2048-d pool features (FID, precision/recall) and the unbiased 1008-way
  logits (IS, Salimans et al. 2016), as torchmetrics' FrechetInceptionDistance(feature=2048) and
  InceptionScore() use them;
- a TorchScript module or torch.export program (`--feature-extractor PATH`) mapping uint8 images to N x F, whose output
  serves as both features and logits (tests use a small fixed random conv net).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from rqscale.data.file_cache import local_copy, unreadable
from rqscale.data.storage import is_s3

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"  # torch-fidelity's port of the TF FID graph


def default_inception_path() -> str:
    """$TORCH_HOME/hub/checkpoints/<file> (torch.hub's cache, ~/.cache/torch by default)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)


@dataclass(frozen=True)
class ExtractorSpec:
    """What to load: kind "inception" (weights file) or "torchscript" (module file)."""

    kind: str
    path: str

    def check(self) -> "ExtractorSpec":
        """A missing file is an error naming it and how to provide it, before any other work. An s3:// file
        is checked to exist here and fetched into each node's cache where it is loaded."""
        problem = unreadable(self.path) if is_s3(self.path) else None
        if problem:
            raise FileNotFoundError(f"{self.kind} weights not readable: {problem}")
        if is_s3(self.path):
            return self
        if os.path.isfile(self.path):
            return self
        if self.kind == "inception":
            raise FileNotFoundError(
                f"Inception weights not found: '{self.path}'. rqscale never downloads them: copy torch-fidelity's "
                f"{INCEPTION_FILE} there (or into $TORCH_HOME/hub/checkpoints/), pass --inception-weights PATH, "
                "or use --feature-extractor PATH (a TorchScript module)")
        raise FileNotFoundError(f"feature extractor not found: '{self.path}' (--feature-extractor wants a TorchScript "
                                "file or a torch.export .pt2 program)")

    def identity(self) -> str:
        """Names the extractor in cache keys and reports: file name + size for Inception, content hash otherwise."""
        path = local_copy(self.path)
        if self.kind == "inception":
            return f"inception-v3-compat:{os.path.basename(path)}:{os.path.getsize(path)}"
        with open(path, "rb") as f:
            return f"torchscript:{hashlib.sha256(f.read()).hexdigest()[:16]}"


def resolve_spec(feature_extractor: str | None, inception_weights: str | None) -> ExtractorSpec:
    if feature_extractor:
        return ExtractorSpec("torchscript", feature_extractor).check()
    return ExtractorSpec("inception", inception_weights or default_inception_path()).check()


class InceptionExtractor(nn.Module):
    """torchmetrics' NoTrainInceptionV3 with both heads in one pass. `antialias=False` keeps
    torch-fidelity's TF1-compatible bilinear resize to 299, so scores compare with published FIDs."""

    def __init__(self, weights_path: str):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"], weights_path, antialias=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pool, logits = self.net._torch_fidelity_forward(images)
        return pool, logits


class ScriptedExtractor(nn.Module):
    """A TorchScript file or a torch.export program (.pt2); its output is used as features and as IS logits."""

    def __init__(self, path: str):
        super().__init__()
        if path.endswith(".pt2"):
            self.net = torch.export.load(path).module()
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript still loads; export is the future path
                self.net = torch.jit.load(path, map_location="cpu")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(images)
        return out, out


def load_extractor(spec: ExtractorSpec, device: str = "cpu") -> nn.Module:
    spec.check()
    path = local_copy(spec.path)
    net = InceptionExtractor(path) if spec.kind == "inception" else ScriptedExtractor(path)
    return net.to(device).eval()


@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, H, W) -> (features N x F, logits N x C), float32 on the CPU."""
    device = next(extractor.parameters(), torch.empty(0)).device
    pools, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        pool, logit = extractor(images[start : start + batch_size].to(device))
        pools.append(pool.float().cpu())
        logits.append(logit.float().cpu())
    return torch.cat(pools), torch.cat(logits)


def to_uint8_images(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (N, 3, H, W) -> uint8, rounded as rqscale.utils.images.to_uint8 (what samples.npz holds)."""
    return images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
