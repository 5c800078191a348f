"""Image bytes for shards: verify they decode, encode arrays, and reject unsafe tar member names."""
from __future__ import annotations

import io
import posixpath
from typing import Optional

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def decode_error(data: bytes) -> Optional[str]:
    """None if `data` is a complete decodable image, else the reason it is not."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return None
    except Exception as exc:  # PIL raises many types for truncated or corrupt files
        return f"undecodable image ({type(exc).__name__}: {exc})"


def jpeg_bytes(data: bytes) -> bytes:
    """JPEG input is kept byte for byte; other formats are re-encoded as quality-95 JPEG."""
    if data[:3] == b"\xff\xd8\xff":
        return data
    with Image.open(io.BytesIO(data)) as image:
        return encode_jpeg(np.asarray(image.convert("RGB")))


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array).astype(np.uint8)).convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def image_item(key: str, data: bytes, **fields) -> dict:
    """A shard item, or an error item (skipped and counted by the writer) if the image is bad."""
    error = decode_error(data)
    if error:
        return {"__key__": key, "__error__": error}
    return {"__key__": key, "jpg": jpeg_bytes(data), **fields}


def safe_member(name: str) -> bool:
    """False for absolute names or names that climb out of the archive (path traversal)."""
    norm = posixpath.normpath(name)
    return not (name.startswith("/") or norm.startswith("..") or "\\" in name or ":" in name.split("/")[0])


def path_key(relative_path: str) -> str:
    """A webdataset key from a path below a root: directories joined by '_', no extension or dots."""
    stem = posixpath.splitext(relative_path.replace("\\", "/"))[0]
    return stem.replace("/", "_").replace(".", "_")


def sample_key(name: str) -> str:
    """A webdataset key from a file name: no directories or extension, no dots (they split fields)."""
    stem = posixpath.splitext(posixpath.basename(name))[0]
    return stem.replace(".", "_")
