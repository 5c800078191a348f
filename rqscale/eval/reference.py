"""Reference images from data_prep shards, and a cache of their features.

Images are read with rqscale's shard reader in its seed-0 epoch order (shards permuted, samples in
stored order), so the first `count` of a class-sorted dataset still span many shards; each image is
centre-cropped and resized to the model's resolution exactly as evaluation-mode training data.

The cache file holds the reference's FID state and its first features (with their k-NN radii) for
precision/recall, under a key of the manifest's content hash, the extractor's identity, the
resolution, the count and how many features are kept: a second evaluation against the same
reference reads one file instead of decoding and extracting again.
"""
from __future__ import annotations

import hashlib
import json
import os

import torch

from rqscale.data.reader import EpochOrder, decode_sample, load_shards, read_run
from rqscale.data.storage import read_bytes

CACHE_VERSION = 1  # bump when what is cached (or how it is computed) changes


def default_cache_dir() -> str:
    return os.environ.get("RQSCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rqscale", "eval")


def reference_size(manifest: str) -> int:
    return sum(s.samples for s in load_shards(manifest))


def read_reference(manifest: str, resolution: int, start: int, count: int) -> tuple[torch.Tensor, int]:
    """(uint8 images (n, 3, R, R), unreadable samples skipped) for positions [start, start + count)."""
    order = EpochOrder(load_shards(manifest), seed=0, epoch=0)
    images, bad = [], 0
    for shard, first, stop, _ in order.runs(start, start + count):
        raws = read_run(shard, first, stop)
        bad += (stop - first) - len(raws)
        for raw in raws:
            try:
                images.append(decode_sample(raw, resolution, None)["image"])
            except Exception:  # corrupt image bytes: skip and count, as the training reader does
                bad += 1
    return (torch.stack(images) if images else torch.empty(0, 3, resolution, resolution, dtype=torch.uint8)), bad


def cache_file(cache_dir: str, manifest: str, extractor_id: str, resolution: int, count: int, kept: int) -> str:
    """<cache_dir>/ref_<hash>.pt, the hash over everything that changes what is cached (`kept`: how many
    features are kept for precision/recall)."""
    key = {"manifest_sha256": hashlib.sha256(read_bytes(manifest)).hexdigest(), "extractor": extractor_id,
           "resolution": resolution, "count": count, "kept": kept, "version": CACHE_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(cache_dir, f"ref_{digest}.pt")


def load_cache(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def save_cache(path: str, entry: dict) -> str:
    """Atomic write: a concurrent reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(entry, tmp)
    os.replace(tmp, path)
    return path
