"""`python -m data_prep.cc3m --tsv Train_GCC-training.tsv (--images DIR | --img2dataset DIR) --out DIR_OR_S3`

CC-3M to `jpg` + `txt` (+ `json` token ids with --tokenizer) shards.
- --tsv: the caption file, `caption<TAB>url` per line; row i has key f"{i:09d}" (img2dataset's naming).
- --images: a folder of downloaded images named by key (any subfolders, e.g. img2dataset "files" output).
  Rows whose image was never downloaded are skipped and counted as missing.
- --img2dataset: img2dataset's webdataset output (tar shards of key.jpg + key.txt); captions come
  from the shards, the TSV is then optional.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile

from data_prep.folder import check_root, image_files, shuffled
from data_prep.images import image_item, safe_member, sample_key
from data_prep.shards import run_converter, summary, write_shards


def read_tsv(path: str) -> list:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"caption TSV not found: '{path}'")
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["caption", "url"]:
        rows = rows[1:]  # img2dataset's header line: keys count data rows only
    return [row[0] for row in rows]


def folder_items(captions: list, root: str, tokenize=None):
    check_root(root)
    by_key = {sample_key(p): p for p in image_files(root)}
    for i, caption in shuffled(list(enumerate(captions))):
        key = f"{i:09d}"
        if key not in by_key:
            yield {"__key__": key, "__error__": "missing image (not downloaded)"}
            continue
        with open(by_key[key], "rb") as f:
            yield _with_tokens(image_item(key, f.read(), txt=caption), tokenize)


def img2dataset_items(root: str, tokenize=None):
    check_root(root)
    for name in sorted(f for f in os.listdir(root) if f.endswith(".tar")):
        with tarfile.open(os.path.join(root, name)) as tar:
            yield from _tar_pairs(tar, tokenize)


def _tar_pairs(tar: tarfile.TarFile, tokenize):
    members = {}
    for m in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
        if not safe_member(m.name):
            yield {"__key__": None, "__error__": f"unsafe member name '{m.name}'"}
            continue
        key, _, ext = os.path.basename(m.name).partition(".")
        members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    for key, fields in members.items():
        if "jpg" not in fields or "txt" not in fields:
            yield {"__key__": key, "__error__": "sample lacks jpg or txt"}
            continue
        yield _with_tokens(image_item(key, fields["jpg"], txt=fields["txt"].decode()), tokenize)


def _with_tokens(item: dict, tokenize) -> dict:
    if tokenize is not None and "__error__" not in item:
        item["json"] = json.dumps(tokenize(item["txt"]))
    return item


def tokenizer_fn(path: str | None):
    if path is None:
        return None
    from tokenizers import Tokenizer

    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: '{path}' (build one with python -m data_prep.tokenizer)")
    tok = Tokenizer.from_file(path)
    return lambda text: tok.encode(text).ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.cc3m", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tsv")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images")
    src.add_argument("--img2dataset")
    p.add_argument("--tokenizer")
    p.add_argument("--out", required=True)
    p.add_argument("--max-samples", type=int, default=1000)
    args = p.parse_args(argv)
    return run_converter("data_prep.cc3m", lambda: convert(args))


def convert(args) -> str:
    tokenize = tokenizer_fn(args.tokenizer)
    if args.images:
        if not args.tsv:
            raise ValueError("--images needs --tsv for the captions")
        captions = read_tsv(args.tsv)
        items, total = folder_items(captions, args.images, tokenize), len(captions)
    else:
        items, total = img2dataset_items(args.img2dataset, tokenize), None
    return summary("cc3m", write_shards(items, args.out, "cc3m", prefix="cc3m", max_samples=args.max_samples, total=total))

if __name__ == "__main__":
    sys.exit(main())
