"""Local paths and s3:// URLs behind one small interface (fsspec / s3fs).

Credentials come only from the environment or an instance role (boto's usual chain). An S3-compatible
endpoint other than AWS (a local moto server in tests, MinIO, ...) is taken from AWS_ENDPOINT_URL.
Transient S3 errors are retried by botocore's adaptive retry mode.
"""
from __future__ import annotations

import functools
import os

import fsspec

S3_RETRIES = {"max_attempts": 10, "mode": "adaptive"}


def is_s3(url: str) -> bool:
    return url.startswith("s3://")


def filesystem(url: str) -> fsspec.AbstractFileSystem:
    """One filesystem object per process and endpoint: creating an S3 client per read costs more
    than the read. Keyed by pid, because a forked loader worker must not share its parent's client."""
    if is_s3(url):
        return _s3(os.environ.get("AWS_ENDPOINT_URL"), os.getpid())
    return fsspec.filesystem("file")


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None, pid: int):
    import s3fs

    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    return s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs={"retries": S3_RETRIES}, skip_instance_cache=True)


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def exists(url: str) -> bool:
    return filesystem(url).exists(url)


def read_bytes(url: str) -> bytes:
    with filesystem(url).open(url, "rb") as f:
        return f.read()


def write_bytes_atomic(url: str, data: bytes) -> None:
    """Write so that a reader never sees a partial object: temp name + rename locally; S3 puts are
    atomic per object (the upload completes or nothing is visible)."""
    fs = filesystem(url)
    if is_s3(url):
        with fs.open(url, "wb") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
    tmp = f"{url}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, url)
