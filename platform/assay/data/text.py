"""The text DataModule, `TextDataModule`: the splits `assay.preparation.text` wrote, held
as tensors."""

from __future__ import annotations

from pathlib import Path

import torch

from assay.config.task import Task
from assay.data.common import (
    SPLITS,
    ArrayDataModule,
    damaged,
)


class TextDataModule(ArrayDataModule):
    kind = "text"
    meta_keys = ("classes", "vocab_size", "max_len", "tokenizer")

    @property
    def task(self) -> Task:
        return Task(
            kind="text",
            in_shape=(self.meta["max_len"],),
            vocab_size=self.meta["vocab_size"],
            num_classes=len(self.meta["classes"]),
            class_names=self.meta["classes"],
        )

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / self.meta["tokenizer"]

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.arrays(split)
        return torch.from_numpy(d["x"]).long(), torch.from_numpy(d["y"]).long()

    def verify(self, splits: tuple[str, ...] = SPLITS) -> None:
        """The splits, and the tokenizer the logged model carries and evaluation reads."""
        super().verify(splits)
        from tokenizers import Tokenizer

        path = self.tokenizer_path
        if not path.is_file():
            raise damaged(path, self.name, "is missing")
        try:
            Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for a file it cannot parse
            raise damaged(path, self.name, f"not a tokenizer ({e})") from None
