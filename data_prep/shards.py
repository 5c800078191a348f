"""Writing webdataset shards: size-bounded, atomic, resumable, with a JSON manifest.

Every converter turns its dataset into a deterministic sequence of items, each a dict with a
`__key__` and encoded fields (`jpg` bytes, `cls` int, `txt` str, ...), or None for an item that could
not be decoded. `write_shards` packs them into tar shards at a local directory or an s3:// prefix:

- a shard closes at `max_samples` samples or `max_bytes` bytes, whichever comes first;
- each shard is built in memory and written atomically (temp name + rename, or one S3 put);
- after every shard, `manifest.json` is rewritten (atomically) with the shards so far, their sample
  counts and sha256 checksums, and the items consumed; a re-run resumes after the last finished shard;
- undecodable items are skipped, logged and listed in the manifest.
"""
from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from rqscale.data.storage import exists, join, read_bytes, write_bytes_atomic

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    dataset: str
    shards: list = field(default_factory=list)  # {name, samples, bytes, sha256, first_item, items, offsets}
    skipped: list = field(default_factory=list)  # {item, key, reason}
    items_done: int = 0
    complete: bool = False
    classes: list = field(default_factory=list)  # class names by label, when the converter knows them (pictures)

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self.shards)

    def to_json(self) -> str:
        return json.dumps({"dataset": self.dataset, "samples": self.samples, "shards": self.shards, "skipped": self.skipped,
                           "items_done": self.items_done, "complete": self.complete, "classes": self.classes}, indent=1)

    @classmethod
    def load(cls, url: str) -> "Manifest":
        data = json.loads(read_bytes(url))
        return cls(data["dataset"], data["shards"], data["skipped"], data["items_done"], data["complete"], data.get("classes", []))


def _encode(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value).encode()
    return str(value).encode()


def tar_bytes(samples: list) -> tuple[bytes, list]:
    """A POSIX (pax) tar of `<key>.<field>` members with fixed metadata, so equal input gives equal bytes,
    and the byte offset where each sample starts (plus the end of the last): readers fetch a run of
    samples with one ranged read.

    Not webdataset.TarWriter (1.0.2): given user="", group="", mode=0o644, mtime=0 and encoder=False it
    writes these very bytes (tests/data/test_webdataset_interop.py checks it), but it reports no offsets
    (only its private tarstream's undocumented TarFile.offset has them), its defaults are not reproducible
    (mtime = time.time(), owner "bigdata"), and it ignores its `format` argument (PAX only because it is
    Python's default). This function gives all three directly."""
    buffer = io.BytesIO()
    offsets = []
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:  # PAX: no 100-char name limit
        for sample in samples:
            offsets.append(buffer.tell())
            for name, value in sorted(sample.items()):
                if name == "__key__":
                    continue
                data = _encode(value)
                info = tarfile.TarInfo(f"{sample['__key__']}.{name}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        offsets.append(buffer.tell())
    return buffer.getvalue(), offsets


class Progress:
    def __init__(self, total: Optional[int], label: str, stream=sys.stderr):
        self.total, self.label, self.stream, self.start = total, label, stream, time.perf_counter()

    def update(self, done: int, shards: int) -> None:
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        print(f"{self.label}: {done}{of} items, {shards} shards, {rate:.0f} items/s", file=self.stream, flush=True)


def _load_or_new(out: str, dataset: str) -> Manifest:
    url = join(out, MANIFEST)
    return Manifest.load(url) if exists(url) else Manifest(dataset)


def write_shards(items: Iterable[Optional[dict]], out: str, dataset: str, prefix: str = "shard", max_samples: int = 1000,
                 max_bytes: int = 1 << 30, total: Optional[int] = None, classes: Optional[list] = None) -> Manifest:
    """Pack `items` into shards under `out`; resume after the last finished shard of an earlier run.
    `classes`: the class names by label, kept in the manifest for labelled pictures."""
    manifest = _load_or_new(out, dataset)
    manifest.classes = list(classes or manifest.classes)
    if manifest.complete:
        return manifest
    progress = Progress(total, dataset)
    source = enumerate(items)
    for _ in range(manifest.items_done):  # resume: items already in finished shards
        next(source, None)
    pending, size, first = [], 0, manifest.items_done
    consumed = first
    for index, item in source:
        consumed = index + 1
        if item is None or "__error__" in item:
            reason = (item or {}).get("__error__", "unreadable")
            manifest.skipped.append({"item": index, "key": (item or {}).get("__key__"), "reason": reason})
            print(f"{dataset}: skipped item {index}: {reason}", file=sys.stderr)
            continue
        pending.append(item)
        size += sum(len(_encode(v)) for k, v in item.items() if k != "__key__")
        if len(pending) >= max_samples or size >= max_bytes:
            _flush(manifest, out, prefix, pending, first, consumed)
            progress.update(consumed, len(manifest.shards))
            pending, size, first = [], 0, consumed
    _flush(manifest, out, prefix, pending, first, consumed, final=True)
    progress.update(consumed, len(manifest.shards))
    return manifest


def _flush(manifest: Manifest, out: str, prefix: str, samples: list, first: int, items_end: int, final: bool = False) -> None:
    if samples:
        name = f"{prefix}-{len(manifest.shards):06d}.tar"
        data, offsets = tar_bytes(samples)
        write_bytes_atomic(join(out, name), data)
        manifest.shards.append({"name": name, "samples": len(samples), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                "first_item": first, "items": items_end - first, "offsets": offsets})
    manifest.items_done = items_end
    manifest.complete = final
    write_bytes_atomic(join(out, MANIFEST), manifest.to_json().encode())


def summary(name: str, manifest: Manifest) -> str:
    return f"{name}: {manifest.samples} samples in {len(manifest.shards)} shards, {len(manifest.skipped)} skipped"


def run_converter(prog: str, convert: Callable[[], str]) -> int:
    """CLI wrapper: bad paths and inputs print one line and exit 2; otherwise print the summary."""
    try:
        line = convert()
    except (FileNotFoundError, ValueError, tarfile.TarError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    print(line)
    return 0
