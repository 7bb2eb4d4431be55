"""The tabular DataModule, `TabularDataModule`: the splits `assay.preparation.tabular` wrote, held
as tensors."""

from __future__ import annotations

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from assay.config.task import Task
from assay.data.common import ArrayDataModule


class TabularDataModule(ArrayDataModule):
    kind = "tabular"
    meta_keys = ("shape", "classes", "mean", "std", "quantiles")

    @property
    def task(self) -> Task:
        return Task(
            kind="tabular",
            in_shape=tuple(self.meta["shape"]),
            num_classes=2,
            class_names=self.meta["classes"],
            mean=self.meta["mean"],
            std=self.meta["std"],
            quantiles=self.meta["quantiles"],
        )

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.arrays(split)
        return torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).long()

    def refit_set(self) -> Dataset:
        # the training split is normal rows only: so is what a refit adds from val
        val = self._data["val"]
        normal = Subset(val, torch.nonzero(val.tensors[1] == 0).squeeze(1).tolist())
        return ConcatDataset([self._data["train"], normal])
