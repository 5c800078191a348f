"""Run checkpoints in storage (a local directory or s3://): layout, completeness, resume, retention.

<run>/checkpoint_<step:08d>/
    <tag>/...                 DeepSpeed's per-rank files for each engine ("engine"; stage 1 has
                              "generator" and "discriminator")
    rank_<r>.pt               that rank's step, world size, reader state, RNG states, skip counts
    config.yaml               the resolved config
    rqscale_complete.json     written last, by rank 0, after every rank's upload finished: the step,
                              the world size and every file with its size

A checkpoint is "complete" only if its marker exists and every file it lists is there with that size,
so a half-uploaded checkpoint (a killed worker, a driver that died mid-upload) is never loaded:
resume takes the newest complete one. Ray's reporting does the uploads under Ray; an in-process run
copies the directory itself (`publish`).
"""
from __future__ import annotations

import json
import os
import posixpath
import random
import re
from typing import Optional

import numpy as np
import torch

from rqscale.data.storage import filesystem, is_s3, join, write_bytes_atomic
from rqscale.utils.safe_load import load_plain

MARKER = "rqscale_complete.json"
_NAME = re.compile(r"^checkpoint_(\d{8})$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _strip_scheme(url: str) -> str:
    return url[len("s3://"):] if is_s3(url) else url


def _with_scheme(run_uri: str, path: str) -> str:
    return "s3://" + path if is_s3(run_uri) else path


def _listing(url: str) -> dict:
    """{relative path: size} of every file below url."""
    fs = filesystem(url)
    fs.invalidate_cache()
    base = _strip_scheme(url).rstrip("/")
    if not fs.exists(url):
        return {}
    return {posixpath.relpath(p, base): int(info["size"]) for p, info in fs.find(url, detail=True).items()}


def mark_complete(run_uri: str, step: int, world_size: int) -> None:
    """Rank 0, after every rank's files are in storage: record them, making the checkpoint loadable."""
    url = join(run_uri, checkpoint_name(step))
    files = {k: v for k, v in _listing(url).items() if k != MARKER}
    marker = {"step": step, "world_size": world_size, "files": files}
    write_bytes_atomic(join(url, MARKER), json.dumps(marker, indent=1).encode())


def is_complete(url: str) -> Optional[dict]:
    """The marker of a complete checkpoint, or None when it is missing or a listed file is absent/short."""
    listing = _listing(url)
    if MARKER not in listing:
        return None
    fs = filesystem(url)
    with fs.open(join(url, MARKER), "rb") as f:
        marker = json.loads(f.read())
    if any(listing.get(name) != size for name, size in marker["files"].items()):
        return None
    return marker


def checkpoint_steps(run_uri: str) -> list:
    """Steps of every checkpoint directory under the run, newest first (complete or not)."""
    fs = filesystem(run_uri)
    fs.invalidate_cache()
    if not fs.exists(run_uri):
        return []
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(run_uri, detail=False)]
    return sorted((int(m.group(1)) for m in map(_NAME.match, names) if m), reverse=True)


def latest_complete(run_uri: str) -> Optional[tuple]:
    """(url, marker) of the newest complete checkpoint of the run, or None."""
    for step in checkpoint_steps(run_uri):
        url = join(run_uri, checkpoint_name(step))
        marker = is_complete(url)
        if marker is not None:
            return url, marker
    return None


def download(url: str, local_dir: str, skip=lambda name: False) -> None:
    """Copy the checkpoint's files to local_dir, except those `skip(relative name)` rejects."""
    fs = filesystem(url)
    base = _strip_scheme(url).rstrip("/")
    for path in fs.find(url):
        name = posixpath.relpath(path, base)
        if skip(name):
            continue
        target = os.path.join(local_dir, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fs.get(_with_scheme(url, path), target)


def publish(local_dir: str, run_uri: str, step: int) -> None:
    """Copy a local checkpoint directory into storage (in-process runs; Ray does this under Ray)."""
    publish_dir(local_dir, join(run_uri, checkpoint_name(step)))


def publish_dir(local_dir: str, target: str) -> None:
    """Copy every file below local_dir to the same relative place below target (local or s3://)."""
    fs = filesystem(target)
    for root, _, files in os.walk(local_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/")
            if not is_s3(target):
                os.makedirs(os.path.dirname(join(target, rel)), exist_ok=True)
            fs.put(os.path.join(root, name), join(target, rel))


def prune(run_uri: str, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than them."""
    complete = [s for s in checkpoint_steps(run_uri) if is_complete(join(run_uri, checkpoint_name(s)))]
    if len(complete) <= keep:
        return
    oldest_kept = complete[keep - 1]
    fs = filesystem(run_uri)
    for step in checkpoint_steps(run_uri):
        if step < oldest_kept:
            fs.rm(join(run_uri, checkpoint_name(step)), recursive=True)


# ---- one rank's own state -------------------------------------------------------------------

def rng_state() -> dict:
    """The torch, numpy, python (and CUDA) RNG states as tensors, strings, ints and floats only, so
    that rank_<r>.pt loads with weights_only=True (np.random.get_state() holds an ndarray, which
    would need numpy's pickled globals)."""
    key, mt, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    mt = torch.from_numpy(mt.astype(np.int64))  # int64 holds every uint32 word of the Mersenne Twister exactly
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": key, "mt": mt, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() saved: every stream continues exactly where it was."""
    n, p = state["numpy"], state["python"]
    torch.set_rng_state(state["torch"])
    np.random.set_state((n["key"], n["mt"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_rank_state(local_dir: str, rank: int, state: dict) -> None:
    torch.save(state, os.path.join(local_dir, f"rank_{rank}.pt"))


def load_rank_state(local_dir: str, rank: int) -> Optional[dict]:
    """This rank's saved state, or None when the checkpoint had fewer ranks (an elastic resize).

    Plain values only (weights_only): the file comes from storage, where anyone with write access
    could have replaced it, and unpickling it must not run their code."""
    path = os.path.join(local_dir, f"rank_{rank}.pt")
    return load_plain(path, map_location="cpu") if os.path.exists(path) else None
