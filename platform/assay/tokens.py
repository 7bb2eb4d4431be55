"""Texts to token ids: one function shared by `prepare` (the training data) and the logged
model's contract (serving), so a text becomes the same ids on both sides."""

from __future__ import annotations

import numpy as np

PAD, UNK = "[PAD]", "[UNK]"  # the tokenizer's first two ids: 0 (what the models mask) and 1


def encode(tok, texts: list[str], max_len: int) -> np.ndarray:
    """(N, max_len) int64 ids from a `tokenizers.Tokenizer`: truncated, padded with id 0."""
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=0, pad_token=PAD, length=max_len)
    return np.array([e.ids for e in tok.encode_batch(texts)], dtype=np.int64)
