"""`python -m data_prep.folder --root DIR --out DIR_OR_S3`: any image folder to shards.

Labelled layout (default): ROOT/<class>/<image>, classes numbered 0.. in sorted order (`cls`).
`--unlabelled`: every image under ROOT, recursively, without `cls` (LSUN exports, FFHQ).
"""
from __future__ import annotations

import argparse
import os
import random
import sys

from data_prep.images import IMAGE_EXTENSIONS, image_item, path_key
from data_prep.shards import run_converter, summary, write_shards


def image_files(root: str) -> list:
    found = []
    for dirpath, _, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def labelled_files(root: str) -> tuple[list, list]:
    """([(path, label)], class names) for ROOT/<class>/... ."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"no class folders under '{root}': use --unlabelled for a flat folder")
    pairs = [(path, label) for label, name in enumerate(classes) for path in image_files(os.path.join(root, name))]
    return pairs, classes


def shuffled(items: list, seed: int = 0) -> list:
    """A fixed permutation of a sorted source list: the reader permutes shards, not samples, so the
    mixing of classes within a shard comes from here. Fixed seed, so re-runs resume correctly."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def file_items(pairs: list, root: str):
    """Items keyed by the path below `root` (class/name), so equal file names in two folders stay apart."""
    for path, label in shuffled(pairs):
        with open(path, "rb") as f:
            data = f.read()
        fields = {} if label is None else {"cls": label}
        yield image_item(path_key(os.path.relpath(path, root)), data, **fields)


def check_root(root: str) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: '{root}'")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.folder", description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True, help="local directory or s3://bucket/prefix")
    parser.add_argument("--name", default="folder")
    parser.add_argument("--unlabelled", action="store_true")
    parser.add_argument("--max-samples", type=int, default=1000, help="samples per shard at most")
    parser.add_argument("--max-bytes", type=int, default=1 << 30, help="bytes per shard at most")
    args = parser.parse_args(argv)
    return run_converter("data_prep.folder", lambda: convert(args))


def convert(args) -> str:
    check_root(args.root)
    pairs = [(p, None) for p in image_files(args.root)] if args.unlabelled else labelled_files(args.root)[0]
    m = write_shards(file_items(pairs, args.root), args.out, args.name, prefix=args.name, max_samples=args.max_samples,
                     max_bytes=args.max_bytes, total=len(pairs))
    return summary(args.name, m)

if __name__ == "__main__":
    sys.exit(main())
