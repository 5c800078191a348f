"""`python -m data_prep.tokenizer --captions FILE_OR_MANIFEST --out tokenizer.json`: the caption tokenizer.

A byte-level BPE with 16,384 entries (the CC-3M setup: captions lowercased, 32 tokens per caption,
padded with [PAD] or truncated). Input: a text file with one caption per line, or a data_prep
manifest whose samples carry `txt` (e.g. the CC-3M or demo shards).
"""
from __future__ import annotations

import argparse
import sys

VOCAB_SIZE = 16384  # ref: CC-3M caption vocabulary
TEXT_LENGTH = 32  # A.2
SPECIAL = ["[PAD]", "[UNK]"]


def train_tokenizer(captions, vocab_size: int = VOCAB_SIZE, length: int = TEXT_LENGTH):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(captions, trainer)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]", length=length)
    tokenizer.enable_truncation(max_length=length)
    return tokenizer


def manifest_captions(manifest_url: str):
    from rqscale.data.reader import load_shards, read_run

    for shard in load_shards(manifest_url):
        for raw in read_run(shard, 0, shard.samples):
            if "txt" in raw:
                yield raw["txt"].decode()


def read_captions(source: str):
    if source.endswith("manifest.json"):
        return list(manifest_captions(source))
    with open(source, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep.tokenizer", description=__doc__)
    parser.add_argument("--captions", required=True, help="text file (one caption per line) or a shards manifest.json")
    parser.add_argument("--out", required=True, help="where to write tokenizer.json")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    parser.add_argument("--length", type=int, default=TEXT_LENGTH)
    args = parser.parse_args(argv)
    try:
        captions = read_captions(args.captions)
    except FileNotFoundError as exc:
        print(f"data_prep.tokenizer: error: {exc}", file=sys.stderr)
        return 2
    tokenizer = train_tokenizer(captions, args.vocab_size, args.length)
    tokenizer.save(args.out)
    print(f"tokenizer: {tokenizer.get_vocab_size()} entries from {len(captions)} captions -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
