"""The driver side of an evaluation: plan chunks, run them (in this process or as Ray tasks), and
accumulate their features in chunk order into the metrics (Sec. 4: FID, IS, precision/recall on
50K samples; CLIP score for text-to-image).

Generated and reference chunks share one run, so a first evaluation against a new reference
starts Ray once. The reference's FID state, its first `pr_cap` features and their k-NN radii are
cached (rqscale.eval.reference) and merged into later evaluations instead of being recomputed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

from rqscale.eval.chunks import ChunkJob, chunk_layout, run_chunk
from rqscale.eval.metrics import fid_metric, inception_score
from rqscale.eval.precision_recall import K_NEIGHBOURS, knn_radii, precision_recall
from rqscale.eval.reference import cache_file, load_cache, save_cache

PR_CAP = 50_000  # Kynkäänniemi et al. 2019 use 50K real and 50K generated images


def run_jobs(jobs: list, workers: int, local: bool, consume: Callable[[dict], None]) -> None:
    """consume(run_chunk(job)) in job order: here, or as Ray tasks with at most `workers` at once."""
    if local or not jobs:
        for job in jobs:
            consume(run_chunk(job))
        return
    from rqscale.launch.eval_tasks import run_chunks

    run_chunks(run_chunk, jobs, workers, consume)


class FeatureSet:
    """Chunk results of one side, in chunk order: the FID state, the first `pr_cap` features,
    IS logits and CLIP-score sums."""

    def __init__(self, real: bool, pr_cap: int = PR_CAP, keep_logits: bool = False):
        self.real, self.pr_cap, self.keep_logits = real, pr_cap, keep_logits
        self.metric, self.kept, self.logits = None, [], []
        self.count = self.unreadable = self.kept_count = 0
        self.clip_sums, self.clip_counts = [], []

    def add(self, result: dict) -> None:
        self.count += result["count"]
        self.unreadable += result["bad"]
        if "clip_sum" in result:
            self.clip_sums.append(result["clip_sum"])
            self.clip_counts.append(result["clip_count"])
        if result.get("features") is not None and result["count"]:
            self._add_features(result["features"], result["logits"])

    def _add_features(self, features: torch.Tensor, logits: torch.Tensor) -> None:
        if self.metric is None:
            self.metric = fid_metric(features.shape[1])
        self.metric.update(features.double(), real=self.real)
        take = min(self.pr_cap - self.kept_count, features.shape[0])
        if take > 0:
            self.kept.append(features[:take])
            self.kept_count += take
        if self.keep_logits:
            self.logits.append(logits)

    def features(self) -> torch.Tensor:
        return torch.cat(self.kept)


@dataclass
class Reference:
    """Reference shards, how many images of them, and their cache entry once known."""

    manifest: str
    resolution: int
    count: int
    cache_path: str
    entry: Optional[dict] = None
    hit: bool = False
    jobs: list = field(default_factory=list)


def plan_reference(manifest: str, resolution: int, count: int, extractor, cache_dir: str, chunk_size: int,
                   device: Optional[str], pr_cap: int = PR_CAP) -> Reference:
    """Look the reference up in the cache; on a miss, the chunk jobs that compute it."""
    path = cache_file(cache_dir, manifest, extractor.identity(), resolution, count, min(count, pr_cap))
    ref = Reference(manifest, resolution, count, path)
    ref.entry = load_cache(ref.cache_path)
    ref.hit = ref.entry is not None
    if not ref.hit:
        base = ChunkJob("reference", 0, 0, 0, device=device, extractor=extractor, manifest=manifest, resolution=resolution)
        ref.jobs = [replace(base, index=i, start=s, count=n) for i, (s, n) in enumerate(chunk_layout(count, chunk_size))]
    return ref


def finish_reference(ref: Reference, real: FeatureSet, pr_device: str) -> dict:
    """The cache entry of a freshly computed reference, written to the cache."""
    if real.metric is None:
        raise ValueError(f"no readable reference image in '{ref.manifest}'")
    features = real.features()
    ref.entry = {"fid_state": {k: v.cpu() for k, v in real.metric.metric_state.items()}, "features": features,
                 "radii": knn_radii(features.to(pr_device)).cpu(), "k": K_NEIGHBOURS, "count": real.count,
                 "unreadable": real.unreadable, "manifest": ref.manifest, "resolution": ref.resolution}
    save_cache(ref.cache_path, ref.entry)
    return ref.entry


def evaluate_jobs(sample_jobs: list, ref: Optional[Reference], workers: int, local: bool, pr_device: str,
                  pr_cap: int = PR_CAP) -> dict:
    """Run the reference (on a cache miss) and sample chunks; FID, IS, precision/recall, CLIP score."""
    real, fake = FeatureSet(True, pr_cap), FeatureSet(False, pr_cap, keep_logits=True)
    drafts = FeatureSet(False, pr_cap, keep_logits=True)
    ref_jobs = ref.jobs if ref is not None else []
    run_jobs(ref_jobs + sample_jobs, workers, local, lambda r: _consume(r, real, fake, drafts))
    if ref is not None and not ref.hit:
        finish_reference(ref, real, pr_device)
    report = sample_metrics(fake, ref, pr_device)
    if drafts.count:  # Draft-and-Revise: the drafts measured like the samples, as in supplement Table 3
        report["drafts"] = {k: v for k, v in sample_metrics(drafts, ref, pr_device).items() if k != "reference"}
    return report


def _consume(result: dict, real: FeatureSet, fake: FeatureSet, drafts: FeatureSet) -> None:
    if result["kind"] == "reference":
        real.add(result)
        return
    fake.add(result)
    if "drafts" in result:
        drafts.add(result["drafts"])


def sample_metrics(fake: FeatureSet, ref: Optional[Reference], pr_device: str) -> dict:
    out: dict = {"num_samples": fake.count}
    if fake.metric is not None:
        out["is"], out["is_std"] = inception_score(torch.cat(fake.logits))
    if fake.metric is not None and ref is not None:
        out.update(_against_reference(fake, ref.entry, pr_device))
        out["reference"] = {"manifest": ref.manifest, "count": ref.entry["count"], "unreadable": ref.entry["unreadable"],
                            "cache_file": ref.cache_path, "cache_hit": ref.hit}
    if fake.clip_counts:
        from rqscale.eval.clip_score import merge_clip

        out.update(merge_clip(fake.clip_sums, fake.clip_counts))
    return out


def _against_reference(fake: FeatureSet, entry: dict, pr_device: str) -> dict:
    metric = fake.metric  # it has seen the generated features; the reference's sums merge in
    metric.merge_state(entry["fid_state"])
    fake_features, real_features = fake.features().to(pr_device), entry["features"].to(pr_device)
    precision, recall = precision_recall(real_features, fake_features, entry["k"], entry["radii"].to(pr_device))
    return {"fid": float(metric.compute()), "precision": precision, "recall": recall, "pr_k": entry["k"],
            "pr_samples": [real_features.shape[0], fake_features.shape[0]]}


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))
