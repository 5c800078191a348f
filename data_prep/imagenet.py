"""`python -m data_prep.imagenet --out DIR_OR_S3 (--train-dir D | --train-tar F | --val-dir D --val-labels F)`

ILSVRC-2012 to `jpg` + `cls` shards, classes numbered 0..999 by sorted synset (n01440764 -> 0).
- train: the extracted layout TRAIN/<synset>/<image>.JPEG, or the original ILSVRC2012_img_train.tar
  (a tar of per-synset tars), read without extracting anything to disk;
- val: the validation images plus labels, either LOC_val_solution.csv (ImageId,PredictionString whose
  first word is the synset) or ILSVRC2012_validation_ground_truth.txt (one 1-based ILSVRC id per image,
  in file-name order) together with --id-synsets, the devkit's synset for each id, one per line.
Members whose names climb out of the archive are skipped and counted, never followed.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tarfile

from data_prep.folder import check_root, file_items, image_files, shuffled
from data_prep.images import image_item, safe_member, sample_key
from data_prep.shards import run_converter, summary, write_shards


def train_dir_pairs(root: str) -> tuple[list, list]:
    check_root(root)
    synsets = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not synsets:
        raise ValueError(f"no synset folders (n01440764, ...) under '{root}'")
    return [(p, i) for i, s in enumerate(synsets) for p in image_files(os.path.join(root, s))], synsets


def _members(tar: tarfile.TarFile) -> list:
    return sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)


def train_tar_items(path: str):
    """Items from the tar of per-synset tars, in a fixed shuffled order: one pass indexes every
    image's byte range in the (uncompressed) outer tar, a second reads them by seeking."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ImageNet train tar not found: '{path}'")
    entries = shuffled(_tar_index(path))
    with open(path, "rb") as f:
        for entry in entries:
            if isinstance(entry, str):
                yield {"__key__": None, "__error__": entry}
                continue
            offset, size, name, label = entry
            f.seek(offset)
            yield image_item(sample_key(name), f.read(size), cls=label)


def _tar_index(path: str) -> list:
    """[(absolute offset, size, member name, label)] for every image, or an error string per unsafe member."""
    entries = []
    with tarfile.open(path) as outer:
        inner_members = _members(outer)
        synsets = sorted(os.path.splitext(os.path.basename(m.name))[0] for m in inner_members if safe_member(m.name))
        label_of = {s: i for i, s in enumerate(synsets)}
        for member in inner_members:
            if not safe_member(member.name):
                entries.append(f"unsafe member name '{member.name}'")
                continue
            label = label_of[os.path.splitext(os.path.basename(member.name))[0]]
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                for m in _members(inner):
                    entries.append((member.offset_data + m.offset_data, m.size, m.name, label) if safe_member(m.name)
                                   else f"unsafe member name '{m.name}'")
    return entries


def val_labels(labels_path: str, images: list, id_synsets: str | None) -> dict:
    """{image stem: synset} from the solution CSV or the ground-truth ids + devkit synset list."""
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(f"validation label file not found: '{labels_path}'")
    if labels_path.endswith(".csv"):
        with open(labels_path, newline="") as f:
            return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}
    if not id_synsets or not os.path.isfile(id_synsets):
        raise FileNotFoundError(f"--id-synsets file not found: '{id_synsets}' (needed with a ground-truth id file)")
    synset_of = open(id_synsets).read().split()
    ids = [int(x) for x in open(labels_path).read().split()]
    if len(ids) != len(images):
        raise ValueError(f"'{labels_path}' has {len(ids)} labels for {len(images)} validation images")
    stems = sorted(sample_key(p) for p in images)
    return {stem: synset_of[i - 1] for stem, i in zip(stems, ids)}


def val_pairs(root: str, labels_path: str, id_synsets: str | None) -> tuple[list, list]:
    check_root(root)
    images = image_files(root)
    labels = val_labels(labels_path, images, id_synsets)
    missing = [p for p in images if sample_key(p) not in labels]
    if missing:
        raise ValueError(f"{len(missing)} validation images have no label in '{labels_path}', e.g. '{missing[0]}'")
    synsets = sorted(set(labels.values()))
    index = {s: i for i, s in enumerate(synsets)}
    return [(p, index[labels[sample_key(p)]]) for p in images], synsets


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m data_prep.imagenet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-dir")
    src.add_argument("--train-tar")
    src.add_argument("--val-dir")
    p.add_argument("--val-labels", help="LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    p.add_argument("--id-synsets", help="devkit synset per ILSVRC id (with a ground-truth .txt)")
    p.add_argument("--out", required=True, help="local directory or s3://bucket/prefix")
    p.add_argument("--max-samples", type=int, default=1000)
    p.add_argument("--max-bytes", type=int, default=1 << 30)
    return p.parse_args(argv)


def items_for(args):
    if args.train_tar:
        return train_tar_items(args.train_tar), None, "imagenet-train"
    if args.train_dir:
        pairs, _ = train_dir_pairs(args.train_dir)
        return file_items(pairs, args.train_dir), len(pairs), "imagenet-train"
    if not args.val_labels:
        raise ValueError("--val-dir needs --val-labels")
    pairs, _ = val_pairs(args.val_dir, args.val_labels, args.id_synsets)
    return file_items(pairs, args.val_dir), len(pairs), "imagenet-val"


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_converter("data_prep.imagenet", lambda: convert(args))


def convert(args) -> str:
    items, total, name = items_for(args)
    return summary(name, write_shards(items, args.out, name, prefix=name, max_samples=args.max_samples, max_bytes=args.max_bytes, total=total))

if __name__ == "__main__":
    sys.exit(main())
