"""s3:// weights as local files: downloaded once per node into a cache keyed by URL and checksum.

An object is cached at  <root>/weights/<sha256(url)[:16]>-<checksum>/<file name>,  where the root is
$RQSCALE_CACHE or ~/.cache/rqscale and the checksum is the object's ETag (the MD5 of a single-part
upload; multipart uploads get a digest of part digests). An object replaced under the same URL therefore
gets a new entry, never a stale one. A single-part download is checked against its MD5.

The workers of one node share the cache: an exclusive lock file around the download lets the first
fetch the object while the others wait, then find it. Each download appends one JSON line to
<root>/downloads.jsonl (url, path, bytes, seconds, pid): the node's own record of what it fetched.
Local paths pass through unchanged, so every loader can call `local_copy` on whatever it is given.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import re
import time

from rqscale.data.storage import filesystem, is_s3

DOWNLOAD_LOG = "downloads.jsonl"
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


def cache_root() -> str:
    return os.environ.get("RQSCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rqscale")


def object_checksum(url: str) -> str:
    """The object's ETag (quotes dropped); FileNotFoundError names the URL when there is no object."""
    try:
        info = filesystem(url).info(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"no object at '{url}'") from None
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return etag or f"size{info['size']}"


def cached_path(url: str, checksum: str) -> str:
    entry = f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{checksum}"
    return os.path.join(cache_root(), "weights", entry, posixpath.basename(url))


def local_copy(url: str) -> str:
    """A local file holding `url`: the path itself when local, else the node's cached copy."""
    if not is_s3(url):
        return url
    checksum = object_checksum(url)
    path = cached_path(url, checksum)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not os.path.isfile(path):  # another worker of this node may have fetched it meanwhile
            _download(url, path, checksum)
    return path


def _download(url: str, path: str, checksum: str) -> None:
    started, tmp = time.perf_counter(), f"{path}.tmp-{os.getpid()}"
    filesystem(url).get_file(url, tmp)
    if _MD5_ETAG.match(checksum) and _md5(tmp) != checksum:
        os.remove(tmp)
        raise OSError(f"download of '{url}' is corrupt: MD5 differs from the object's ETag {checksum}")
    os.replace(tmp, path)  # readers never see a partial file under the real name
    record = {"url": url, "path": path, "bytes": os.path.getsize(path), "seconds": round(time.perf_counter() - started, 3),
              "pid": os.getpid()}
    with open(os.path.join(cache_root(), DOWNLOAD_LOG), "a") as log:
        log.write(json.dumps(record) + "\n")


def _md5(path: str) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def downloads(root: str | None = None) -> list:
    """The download records of a cache root (this node's), oldest first."""
    path = os.path.join(root or cache_root(), DOWNLOAD_LOG)
    return [json.loads(line) for line in open(path)] if os.path.isfile(path) else []
