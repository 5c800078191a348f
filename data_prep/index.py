"""`python -m data_prep.index --shards DIR_OR_PATTERN [--out manifest.json] [--dataset NAME]`

Index existing webdataset tar shards (written by webdataset.ShardWriter, img2dataset, or anything that
follows the webdataset convention) and write rqscale's manifest.json next to them; the tars are not
rewritten. The manifest is what rqscale's reader needs beyond the library: every sample's byte offset
(a rank reads its slice of a global batch with one ranged read) and sha256 checksums.

--shards is a directory or s3:// prefix (its *.tar files; img2dataset's .parquet and _stats.json files
are not shards), or a pattern in one directory with webdataset's brace notation or shell globs, e.g.
`s3://bucket/cc3m/{00000..00099}.tar` or `data/shard-*.tar`.

A sample is a run of consecutive members with one key, the member name up to the first dot of its
basename (webdataset's own rule, webdataset.tariterators.base_plus_ext).
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import os
import posixpath
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from data_prep.shards import MANIFEST, Manifest, Progress, run_converter, summary
from rqscale.data.storage import filesystem, is_s3, join, write_bytes_atomic

CHUNK = 1 << 20
GLOBS = "*?["


def shard_urls(spec: str) -> tuple:
    """(directory, sorted shard URLs) named by a directory / s3:// prefix or a pattern in one directory."""
    directory, patterns = _patterns(spec.rstrip("/"))
    names = _list(filesystem(directory), directory)
    missing = [p for p in patterns if not any(c in p for c in GLOBS) and p not in names]
    if missing:
        raise FileNotFoundError(f"not found: '{join(directory, missing[0])}'")
    chosen = sorted(n for n in names if n.endswith(".tar") and any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if not chosen:
        raise ValueError(f"no .tar shards in '{spec}'")
    return directory, [join(directory, n) for n in chosen]


def _patterns(spec: str) -> tuple:
    """(directory, file name patterns): a directory's *.tar, or the names a pattern's last part gives."""
    if not any(c in spec for c in GLOBS + "{") and filesystem(spec).isdir(spec):
        return spec, ["*.tar"]
    directory, pattern = posixpath.split(spec)
    if any(c in directory for c in GLOBS + "{"):
        raise ValueError(f"'{spec}': patterns may only name files of one directory")
    return directory or ".", expand_urls(pattern)  # webdataset's brace expansion: the spec WebDataset(urls) takes


def _list(fs, directory: str) -> set:
    if not fs.isdir(directory):
        raise FileNotFoundError(f"shard directory not found: '{directory}'")
    fs.invalidate_cache(directory)  # s3fs caches listings per process: shards may have been written since
    return {posixpath.basename(p.rstrip("/")) for p in fs.ls(directory, detail=False)}


class _Hashing:
    """A read-only stream that hashes and counts what passes through it, so one sequential read of a shard
    gives its tar headers, sha256 and size (on S3: one download, never the whole shard in memory). It also
    notes where the last non-zero byte was: tarfile stops quietly at a damaged header, and data past the
    last member it read means it did."""

    def __init__(self, f):
        self.f, self.sha, self.size, self.last_data = f, hashlib.sha256(), 0, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.sha.update(data)
        nonzero = len(data.rstrip(b"\0"))
        self.last_data = self.size + nonzero if nonzero else self.last_data
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def index_shard(url: str) -> dict:
    """One shard's manifest entry but its name: {samples, bytes, sha256, offsets}."""
    with filesystem(url).open(url, "rb") as f:
        stream = _Hashing(f)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:  # "r|": read in order, never seek back
                offsets = sample_offsets(tar, url)
                members_end = tar.offset  # where tarfile stopped: the end-of-archive marker, or a header it could not read
        except tarfile.TarError as exc:  # not a tar, compressed, empty, or cut short inside a member ("unexpected end of data")
            raise ValueError(f"'{url}' is not a readable uncompressed tar file ({exc})") from None
        stream.drain()  # the end-of-archive blocks, which the checksum covers too
    if stream.last_data > members_end:
        raise ValueError(f"'{url}' has an unreadable tar header at byte {members_end} (data follows it up to byte {stream.last_data})")
    return {"samples": len(offsets) - 1, "bytes": stream.size, "sha256": stream.sha.hexdigest(), "offsets": offsets}


def sample_offsets(tar: tarfile.TarFile, url: str) -> list:
    """The byte position of each sample's first header (TarInfo.offset includes any pax / GNU long-name
    header before it), then the end of the last sample's data: the ranges rqscale.data.reader.read_entries
    fetches. Members webdataset skips are allowed before and after the samples, not between them, where
    they would land inside a sample's byte range."""
    offsets, key, end, stray = [], None, 0, None
    for member in tar:
        k = _sample_key(member)
        if k is None:
            stray = stray or (member.name if key is not None else None)
            continue
        if stray:
            raise ValueError(f"'{url}': member '{stray}' is not a sample file (KEY.EXT) but lies between samples")
        if k != key:
            offsets.append(member.offset)
            key = k
        end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # data padded to blocks
    if not offsets:
        raise ValueError(f"'{url}' holds no samples (no member named KEY.EXT)")
    return offsets + [end]


def _sample_key(member: tarfile.TarInfo) -> str | None:
    """The member's sample key by webdataset's rule (rqscale's reader groups by the same rule), or None
    for what webdataset skips: not a regular file, or no extension."""
    return base_plus_ext(member.name)[0] if member.isreg() else None


def index(spec: str, out: str | None = None, dataset: str | None = None, workers: int = 8) -> Manifest:
    """Index the shards `spec` names and write the manifest (default: manifest.json beside them)."""
    directory, urls = shard_urls(spec)
    out = out or join(directory, MANIFEST)
    if _normal(posixpath.dirname(out) or ".") != _normal(directory):
        raise ValueError(f"--out '{out}' must be in the shards' directory '{directory}': shard names are resolved against it")
    manifest = Manifest(dataset or posixpath.basename(_normal(directory)), complete=True)
    progress = Progress(None, f"index {manifest.dataset}")
    with ThreadPoolExecutor(max(1, workers)) as pool:  # shards are independent; S3 reads overlap
        for url, e in zip(urls, pool.map(index_shard, urls)):
            # The keys and their order of data_prep.shards.write_shards' entries: one schema, one reader.
            manifest.shards.append({"name": posixpath.basename(url), "samples": e["samples"], "bytes": e["bytes"], "sha256": e["sha256"],
                                    "first_item": manifest.samples, "items": e["samples"], "offsets": e["offsets"]})
            progress.update(manifest.samples, len(manifest.shards))
    manifest.items_done = manifest.samples
    write_bytes_atomic(out, manifest.to_json().encode())
    return manifest


def _normal(path: str) -> str:
    return path.rstrip("/") if is_s3(path) else os.path.abspath(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.index", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="directory / s3:// prefix, or a pattern such as DIR/{00000..00099}.tar")
    p.add_argument("--out", help="manifest path, in the shards' directory (default: DIR/manifest.json)")
    p.add_argument("--dataset", help="dataset name in the manifest (default: the directory's name)")
    p.add_argument("--workers", type=int, default=8, help="shards indexed at once")
    args = p.parse_args(argv)
    return run_converter("data_prep.index", lambda: convert(args))


def convert(args) -> str:
    manifest = index(args.shards, args.out, args.dataset, args.workers)
    return summary(manifest.dataset, manifest)


if __name__ == "__main__":
    sys.exit(main())
