"""s3:// weights as local files: downloaded once per node into a cache keyed by URL and checksum.

An object is cached at  <root>/weights/<sha256(url)[:16]>-<checksum>/<file name>,  where the root is
$RQSCALE_CACHE or ~/.cache/rqscale (node-local disk: the lock below is a node's) and the checksum is
the object's ETag (the MD5 of a single-part upload without KMS or customer-key encryption; otherwise an
opaque digest). An object replaced under the same URL therefore gets a new entry. A download whose ETag
is its MD5 is checked against it, and fetched again (3 tries) if it differs.

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
import tempfile
import time

from rqscale.data.storage import filesystem, is_s3

DOWNLOAD_LOG = "downloads.jsonl"
DOWNLOAD_TRIES = 3
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


class DownloadError(ValueError):
    """A download that kept arriving corrupt (a ValueError: the CLIs print it as one line)."""


def cache_root() -> str:
    return os.environ.get("RQSCALE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rqscale")


def object_info(url: str) -> dict:
    """The object's metadata, asked of S3 now (not from a listing s3fs cached); FileNotFoundError names
    the URL when there is no object."""
    fs = filesystem(url)
    fs.invalidate_cache(url)
    try:
        return fs.info(url)
    except FileNotFoundError:
        raise FileNotFoundError(f"no object at '{url}'") from None


def unreadable(url: str) -> str | None:
    """Why the object at `url` cannot be loaded (missing, forbidden, no credentials), or None: the check
    made before any worker starts."""
    try:
        object_info(url)
    except FileNotFoundError:
        return f"there is no object at '{url}'"
    except Exception as exc:  # PermissionError, botocore's NoCredentialsError, an unreachable endpoint ...
        return f"cannot read '{url}' ({type(exc).__name__}: {exc})"
    return None


def object_checksum(url: str, info: dict | None = None) -> str:
    """The object's ETag (quotes dropped), or its size where the store gives none."""
    return _etag(info or object_info(url))


def _etag(info: dict) -> str:
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return etag or f"size{info['size']}"


def md5_of(info: dict) -> str | None:
    """The object's MD5 when its ETag is one: single-part, and not KMS- or customer-key-encrypted."""
    etag = _etag(info)
    encrypted = info.get("ServerSideEncryption") == "aws:kms" or info.get("SSECustomerAlgorithm")
    return etag if _MD5_ETAG.match(etag) and not encrypted else None


def cached_path(url: str, checksum: str) -> str:
    entry = f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{checksum}"
    return os.path.join(cache_root(), "weights", entry, posixpath.basename(url))


def local_copy(url: str) -> str:
    """A local file holding `url`: the path itself when local, else the node's cached copy."""
    if not is_s3(url):
        return url
    info = object_info(url)
    path = cached_path(url, object_checksum(url, info))
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not os.path.isfile(path):  # another worker of this node may have fetched it meanwhile
            _download(url, path, md5_of(info))
    return path


def _download(url: str, path: str, md5: str | None) -> None:
    started = time.perf_counter()
    for _ in range(DOWNLOAD_TRIES):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".download-")  # unique, beside the target
        os.close(fd)
        try:
            filesystem(url).get_file(url, tmp)
            if md5 is None or _md5(tmp) == md5:
                os.replace(tmp, path)  # readers never see a partial file under the real name
                break
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)  # a failed or corrupt attempt leaves nothing behind
    else:
        raise DownloadError(f"'{url}' arrived corrupt {DOWNLOAD_TRIES} times (MD5 differs from its ETag {md5}): "
                            "check the object, or the network path to the store")
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
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # a line cut by a crash is left out
