"""Caption tokens for text-conditional models: a `tokenizers` BPE file, padded to a fixed length.

Captions are lowercased, tokenized, cut to the model's text length keeping the first tokens, and
right-padded with [PAD] (id 0 in data_prep.tokenizer's files): the reference's CC-3M text pipeline
(ref: rqvae/txtimg_datasets, truncation keeps the start, padding on the right, no BOS/EOS). Training
and sampling cut a long caption the same way; sampling also warns (rqscale.sampling.generate).
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import torch

PAD_TOKEN = "[PAD]"


class CaptionTokenizer:
    def __init__(self, path: str, length: int):
        from tokenizers import Tokenizer

        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: '{path}' (set stage2.tokenizer to a tokenizer.json)")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise ValueError(f"'{path}' is not a tokenizers JSON file ({exc}): set stage2.tokenizer to one "
                             "python -m data_prep.tokenizer wrote") from None
        self.tokenizer.no_truncation()  # cut here, so that token_count() sees the whole caption
        self.tokenizer.no_padding()
        self.length = length
        pad = self.tokenizer.token_to_id(PAD_TOKEN)
        self.pad_id = 0 if pad is None else pad

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def ids(self, text: str) -> list:
        """All of the caption's token ids, uncut."""
        return self.tokenizer.encode(text.lower()).ids

    def token_count(self, text: str) -> int:
        return len(self.ids(text))

    def _fixed(self, ids: list) -> list:
        ids = ids[: self.length]  # ref: the first `length` tokens are kept
        return ids + [self.pad_id] * (self.length - len(ids))

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (length,): the first `length` tokens, padded with [PAD]."""
        return torch.tensor(self._fixed(self.ids(text)), dtype=torch.long)

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), length) token ids, one row per caption, as encode() gives them. One at a time: the
        library's batch call starts a thread pool, and a DataLoader forked after it warns once per worker."""
        return torch.tensor([self._fixed(self.ids(t)) for t in texts], dtype=torch.long).view(len(texts), self.length)


def read_caption_file(path: str, flag: str = "--captions") -> list:
    """The non-blank lines of a UTF-8 caption file, in order; a missing, unreadable or empty file is a
    ValueError naming `flag` (FileNotFoundError when missing)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{flag}: captions file not found: '{path}' (one caption per line)")
    try:
        with open(path, encoding="utf-8") as f:
            captions = [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{flag}: '{path}' is not UTF-8 text") from None
    if not captions:
        raise ValueError(f"{flag}: '{path}' holds no caption: write one caption per line")
    return captions


def tokenizer_of(cfg) -> CaptionTokenizer:
    """The tokenizer a text-conditional config names (stage2.tokenizer), loaded once per process."""
    if not cfg.stage2.tokenizer:
        raise ValueError("a text-conditional model needs a tokenizer: stage2.tokenizer names none")
    return _load(_local(cfg.stage2.tokenizer), cfg.stage2.model.text_length)


@functools.lru_cache(maxsize=4)
def _local(path: str) -> str:
    """The tokenizer file (an s3:// one fetched once per process into the node's cache)."""
    from rqscale.data.file_cache import local_copy

    return local_copy(path)


@functools.lru_cache(maxsize=2)
def _load(path: str, length: int) -> CaptionTokenizer:
    return CaptionTokenizer(path, length)
