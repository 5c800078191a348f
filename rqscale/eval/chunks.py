"""One unit of evaluation work: a chunk of generated samples or of reference images, turned into
features. A chunk runs the same way in this process (`--local`) or as a Ray task on any worker.

A chunk of samples draws its codes with its own generator, seeded from (the request's seed, chunk
index), and its conditions (class labels or captions) are planned by the driver for the whole run,
so the result depends only on the seed and the chunk layout, never on which worker ran which chunk
or how many there were. Models are loaded once per worker process (Ray reuses a worker for many chunks).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from rqscale.eval.features import ExtractorSpec, extract, load_extractor, to_uint8_images
from rqscale.sampling.generate import condition_tensor, sample_images
from rqscale.sampling.request import SampleRequest


@dataclass(frozen=True)
class ChunkJob:
    kind: str  # "samples" | "npz" | "reference" | "recon"
    index: int
    start: int
    count: int
    device: Optional[str] = None  # None: cuda when the worker has one (for samples too, whatever request.device says)
    extractor: Optional[ExtractorSpec] = None  # None: no FID/IS features (CLIP score only)
    request: Optional[SampleRequest] = None  # samples: the run's checkpoint, sampling params, batch size and seed
    labels: Optional[tuple] = None  # samples: class label of each sample of the chunk
    captions: Optional[tuple] = None  # samples / npz: caption of each sample (text models, CLIP score)
    clip_model: Optional[str] = None  # samples / npz: local CLIP directory for the CLIP score
    samples_npz: Optional[str] = None  # npz: the samples.npz
    manifest: Optional[str] = None  # reference / recon: the shards' manifest.json
    resolution: int = 0
    batch_size: int = 64  # recon: images reconstructed at once
    rqvae: Optional[str] = None  # recon: rqvae.pt
    rqvae_config: Optional[str] = None  # recon: its YAML


def chunk_layout(total: int, chunk_size: int) -> list[tuple[int, int]]:
    """[(start, count)] covering [0, total) in chunks of `chunk_size` (the last may be short)."""
    return [(s, min(chunk_size, total - s)) for s in range(0, total, chunk_size)]


def chunk_seed(seed: int, index: int) -> int:
    """Independent, reproducible stream per chunk (numpy's SeedSequence mixing)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def run_chunk(job: ChunkJob) -> dict:
    """{"index", "kind", "count", "bad", "features"?, "logits"?, "clip_sum"?, ..., "drafts"?} for one chunk;
    "drafts" (a contextual checkpoint's samples) holds the same entries for the chunk's drafts."""
    device = job.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if job.kind == "recon":
        from rqscale.eval.rfid import recon_chunk

        return recon_chunk(job, device)
    drafts = [] if job.kind == "samples" else None
    images, bad = _images(job, device, drafts)
    result = image_features(job, images, bad, device)
    if drafts:  # a contextual checkpoint: its drafts are measured as well (supplement Table 3)
        result["drafts"] = image_features(job, to_uint8_images(torch.cat(drafts)), 0, device)
    return dict(result, index=job.index, kind=job.kind)


def image_features(job: ChunkJob, images: torch.Tensor, bad: int, device: str) -> dict:
    """{"count", "bad", "features"?, "logits"?, "clip_sum"?, "clip_count"?} of uint8 images (n, 3, H, W)."""
    result = {"count": int(images.shape[0]), "bad": bad}
    if job.extractor is not None:
        result["features"], result["logits"] = extract(cached_extractor(job.extractor, device), images)
    if job.clip_model is not None:
        from rqscale.eval.clip_score import clip_score_sum

        result["clip_sum"], result["clip_count"] = clip_score_sum(job.clip_model, images, list(job.captions), device)
    return result


def _images(job: ChunkJob, device: str, drafts: Optional[list] = None) -> tuple[torch.Tensor, int]:
    if job.kind == "reference":
        from rqscale.eval.reference import read_reference

        return read_reference(job.manifest, job.resolution, job.start, job.count)
    if job.kind == "samples":
        return generate_chunk(job, device, drafts), 0
    if job.kind == "npz":
        pixels = npz_images(job.samples_npz)[job.start : job.start + job.count]
        return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), 0
    raise ValueError(f"unknown chunk kind '{job.kind}'")


@functools.lru_cache(maxsize=1)
def npz_images(path: str) -> np.ndarray:
    """`images` (uint8 N x H x W x 3) of a samples.npz that rqscale.sample wrote."""
    with np.load(path) as data:
        return data["images"]


@functools.lru_cache(maxsize=2)
def cached_extractor(spec: ExtractorSpec, device: str):
    return load_extractor(spec, device)


@functools.lru_cache(maxsize=1)
def cached_checkpoint(path: str, device: str):
    from rqscale.sampling.checkpoint import load_consolidated

    return load_consolidated(path, device)


def generate_chunk(job: ChunkJob, device: str, drafts: Optional[list] = None) -> torch.Tensor:
    """The chunk's samples as uint8 (n, 3, H, W), through the sampling loop rqscale.sample runs too; a
    contextual checkpoint's decoded drafts go to `drafts`."""
    request = job.request
    cfg, rqvae, model = cached_checkpoint(request.checkpoint, device)
    params = request.params.resolve(model.depth_codes, model.num_codes)
    cond = condition_tensor(cfg, job.labels, job.captions, device)  # planned, and checked, by the driver
    gen = torch.Generator(device=device).manual_seed(chunk_seed(request.seed, job.index))
    keep = drafts if cfg.stage2.model.kind == "contextual" else None
    images = sample_images(cfg, rqvae, model, params, cond, job.count, request.batch_size, gen, request.schedule(cfg), drafts=keep)
    return to_uint8_images(images)
