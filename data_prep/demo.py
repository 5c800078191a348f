"""`python -m data_prep.demo --out DIR_OR_S3`: the embedded real dataset used by the demo and tests.

- digits/: scikit-learn's 1,797 handwritten digits as 32x32 RGB JPEGs, with `cls` (0-9) and a
  caption `txt` such as "a handwritten digit seven" (for a text-conditional demo);
- photos/: scikit-image's and scikit-learn's bundled colour photographs at full size, `cls` = photo
  index, `txt` = its name, for RQ-VAE reconstructions.
Nothing is downloaded: both packages ship these images.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from data_prep.images import encode_jpeg
from data_prep.shards import write_shards
from rqscale.data.bundled import class_captions, class_names
from rqscale.data.storage import join


def digit_items(resolution: int = 32):
    from PIL import Image
    from sklearn.datasets import load_digits

    data, captions = load_digits(), class_captions("digits")
    for i, (image, label) in enumerate(zip(data.images, data.target)):
        gray = (image / 16.0 * 255).astype(np.uint8)
        big = np.asarray(Image.fromarray(gray).resize((resolution, resolution), Image.BILINEAR))
        rgb = np.repeat(big[..., None], 3, axis=2)
        yield {"__key__": f"digit{i:05d}", "jpg": encode_jpeg(rgb), "cls": int(label), "txt": captions[label]}


def photo_items():
    from rqscale.data.bundled import photo_arrays

    captions = class_captions("photos")
    for i, photo in enumerate(photo_arrays()):
        yield {"__key__": f"photo{i:03d}", "jpg": encode_jpeg(photo), "cls": i, "txt": captions[i]}


def build(out: str, digits_per_shard: int = 256) -> dict:
    digits = write_shards(digit_items(), join(out, "digits"), "demo-digits", prefix="digits", max_samples=digits_per_shard, total=1797,
                          classes=class_names("digits"))
    photos = write_shards(photo_items(), join(out, "photos"), "demo-photos", prefix="photos", max_samples=4, total=8)
    return {"digits": digits, "photos": photos}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.demo", description=__doc__)
    parser.add_argument("--out", required=True, help="local directory or s3://bucket/prefix")
    parser.add_argument("--digits-per-shard", type=int, default=256)
    args = parser.parse_args(argv)
    result = build(args.out, args.digits_per_shard)
    for name, manifest in result.items():
        print(f"{name}: {manifest.samples} samples in {len(manifest.shards)} shards, {len(manifest.skipped)} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
