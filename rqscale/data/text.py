"""Caption tokens for text-conditional models: a `tokenizers` BPE file, padded to a fixed length."""
from __future__ import annotations

import os

import torch

PAD_TOKEN = "[PAD]"


class CaptionTokenizer:
    def __init__(self, path: str, length: int):
        from tokenizers import Tokenizer

        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file not found: '{path}' (set stage2.tokenizer to a tokenizer.json)")
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.no_truncation()  # a caption that is too long must be an error here, not cut
        self.tokenizer.no_padding()
        self.length = length
        pad = self.tokenizer.token_to_id(PAD_TOKEN)
        self.pad_id = 0 if pad is None else pad

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (length,), padded with [PAD]; a caption longer than `length` is an error."""
        ids = self.tokenizer.encode(text.lower()).ids
        if len(ids) > self.length:
            raise ValueError(f"text has {len(ids)} tokens, more than the model's {self.length}: shorten it")
        return torch.tensor(ids + [self.pad_id] * (self.length - len(ids)), dtype=torch.long)
