"""Reconstruction FID of an RQ-VAE, overall and per depth (Sec. 4.4, Table A.2).

rFID is the FID between validation images and their reconstructions (Sec. 4.4); per depth d the
reconstruction is G(Z^(d)), the decode of the partial sum of the first d codes (Table A.2: 100.86,
22.74, 7.66, 4.73 for d = 1..4 on ImageNet). The same chunks also give the per-depth MSE of
rqscale.eval.reconstruction and the codebook usage.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from rqscale.data.transforms import to_unit_range
from rqscale.eval.features import extract, to_uint8_images
from rqscale.eval.metrics import fid_metric
from rqscale.eval.reconstruction import depth_reconstructions
from rqscale.models.dqvae import codes_per_image


def rqvae_config_path(weights: str, config: str | None) -> str:
    """The RQ-VAE's YAML: --rqvae-config, else `<weights>.yaml` (rqscale.export), else the run's config.yaml."""
    beside = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.yaml")
    candidates = [config] if config else [weights + ".yaml", beside]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no config for the RQ-VAE '{weights}': looked for {candidates}; pass --rqvae-config YAML")


@functools.lru_cache(maxsize=1)
def load_rqvae(weights: str, config: str, device: str = "cpu"):
    """The RQ-VAE from its state dict and YAML, as stage 2 loads `stage2.rqvae_checkpoint`."""
    from rqscale.config import from_yaml_text
    from rqscale.models import build_stage1_model
    from rqscale.train.stage1 import load_init_weights

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"RQ-VAE weights not found: '{weights}' (--rqvae wants the rqvae.pt a stage-1 run writes)")
    with open(config) as f:
        cfg = from_yaml_text(f.read())
    model = build_stage1_model(cfg.rqvae)  # an RQ-VAE or a DQ-VAE (rqvae.kind)
    load_init_weights(model, weights, "--rqvae")
    return model.to(device).eval()


@torch.no_grad()
def recon_chunk(job, device: str) -> dict:
    """Features of a chunk of reference images and of their per-depth reconstructions, squared errors
    per depth and the codes used."""
    from rqscale.eval.chunks import cached_extractor
    from rqscale.eval.reference import read_reference

    model = load_rqvae(job.rqvae, job.rqvae_config, device)
    extractor = cached_extractor(job.extractor, device)
    images, bad = read_reference(job.manifest, job.resolution, job.start, job.count)
    depth = model.cfg.code_shape[2]
    out = {"index": job.index, "kind": "recon", "count": int(images.shape[0]), "bad": bad, "numel": images.numel(),
           "features": extract(extractor, images)[0], "depth_features": [[] for _ in range(depth)], "sq_err": [0.0] * depth,
           "used": torch.zeros(model.cfg.num_codes, dtype=torch.bool)}
    for start in range(0, images.shape[0], job.batch_size):
        _recon_batch(model, extractor, images[start : start + job.batch_size], device, out)
    out["depth_features"] = [torch.cat(f) if f else torch.empty(0) for f in out["depth_features"]]
    return out


def _recon_batch(model, extractor, batch: torch.Tensor, device: str, out: dict) -> None:
    x = to_unit_range(batch.to(device))
    if model.cfg.kind == "dq":  # a DQ-VAE (one depth): how many codes each image's sequence holds (256 + 3 x fine regions at 256^2)
        codes, grain = model.encode_with_grain(x)
        recons = [model.decode_codes(codes)]
        out.setdefault("codes_per_image", []).append(codes_per_image(grain).cpu())
    else:
        codes, recons = depth_reconstructions(model, x)
    out["used"][codes.flatten().cpu()] = True
    for d, recon in enumerate(recons):
        out["sq_err"][d] += float(F.mse_loss(recon.float(), x, reduction="sum"))  # unclamped, as coarse_to_fine
        out["depth_features"][d].append(extract(extractor, to_uint8_images(recon))[0])


class ReconAccumulator:
    """Recon chunk results, in chunk order, streamed into one FID state per depth."""

    def __init__(self):
        self.metrics, self.sq_err, self.used = None, None, None
        self.count = self.unreadable = self.numel = 0
        self.codes_per_image: list = []  # a DQ-VAE's, per image

    def add(self, chunk: dict) -> None:
        self.count += chunk["count"]
        self.unreadable += chunk["bad"]
        self.numel += chunk["numel"]
        if not chunk["count"]:
            return
        if self.metrics is None:
            self.metrics = [fid_metric(chunk["features"].shape[1]) for _ in chunk["depth_features"]]
            self.sq_err, self.used = [0.0] * len(self.metrics), chunk["used"].clone()
        for d, metric in enumerate(self.metrics):
            metric.update(chunk["features"].double(), real=True)
            metric.update(chunk["depth_features"][d].double(), real=False)
            self.sq_err[d] += chunk["sq_err"][d]
        self.used |= chunk["used"]
        self.codes_per_image.extend(chunk.get("codes_per_image", []))

    def report(self) -> dict:
        if self.metrics is None:
            raise ValueError("no readable reference image to reconstruct")
        rfid = [float(m.compute()) for m in self.metrics]
        out = {"rfid": rfid[-1], "rfid_depth": rfid, "mse_depth": [e / self.numel for e in self.sq_err],
               "codebook_usage": self.used.float().mean().item(), "num_images": self.count, "unreadable": self.unreadable}
        if self.codes_per_image:
            counts = torch.cat(self.codes_per_image).double()
            out["codes_per_image"] = {"mean": counts.mean().item(), "std": counts.std(unbiased=False).item(),
                                      "min": int(counts.min()), "max": int(counts.max())}
        return out
