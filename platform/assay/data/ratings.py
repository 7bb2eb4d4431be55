"""The ratings DataModule, `RatingsDataModule`: the splits `assay.preparation.ratings` wrote, held
as tensors.

Batches are (user, item, position, rating). `position` is a training rating's place in its
user's training history, k/n for the k-th of n by time (recomputed over train + val for a
refit); a val or test rating, which comes after all of them, is at 1 ("now"), as is every rating
`assay predict` is asked for. The recommenders' recent-user bias reads it.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from assay.config.task import Task
from assay.data.common import ArrayDataModule, Tensors
from assay.preparation.ratings import history_positions


class RatingsDataModule(ArrayDataModule):
    kind = "ratings"
    eval_batch_size = 8192
    meta_keys = ("n_users", "n_items", "rating_range", "train_mean")
    row_arrays = ("u", "i", "r", "t")

    def required_arrays(self, split: str) -> tuple[str, ...]:
        return (*self.row_arrays, "rank_items") if split == "test" else self.row_arrays

    @cached_property  # reads the training split once, for its item counts
    def task(self) -> Task:
        m = self.meta
        return Task(
            kind="ratings",
            in_shape=(2,),
            n_users=m["n_users"],
            n_items=m["n_items"],
            rating_range=tuple(m["rating_range"]),
            item_counts=self._item_counts(m["n_items"]),
            item_attributes=m.get("item_attributes", []),
            n_item_attributes=len(m.get("item_attribute_names", [])),
            mean=[m["train_mean"]],
        )

    def _item_counts(self, n_items: int) -> list[int]:
        """Each film's ratings in what the model trains on (train, plus val for a refit)."""
        splits = ("train", "val") if self.refit else ("train",)
        items = np.concatenate([self.arrays(s)["i"] for s in splits])
        return np.bincount(items, minlength=n_items).tolist()

    def tensors(self, split: str) -> tuple[torch.Tensor, ...]:
        return self._ratings((split,), now=split != "train")

    def refit_set(self) -> Tensors:
        # positions over the whole of train + val: val's ratings are each user's latest
        return Tensors(*self._ratings(("train", "val"), now=False))

    def _ratings(self, splits: tuple[str, ...], now: bool) -> tuple[torch.Tensor, ...]:
        d = [self.arrays(s) for s in splits]
        u, i, t, r = (np.concatenate([a[k] for a in d]) for k in "uitr")
        position = np.ones(len(u), np.float32) if now else history_positions(u, i, t)
        return (
            torch.from_numpy(u).long(),
            torch.from_numpy(i).long(),
            torch.from_numpy(position),
            torch.from_numpy(r).float(),
        )

    def example_input(self, n: int = 4) -> np.ndarray:
        u, i, *_ = self.tensors("val")
        return torch.stack([u[:n], i[:n]], 1).numpy()  # (n, 2) [user, item]
