"""The series DataModule, `SeriesDataModule`: the splits `assay.preparation.series` wrote, held
as tensors."""

from __future__ import annotations

import torch

from assay.config.task import Task
from assay.data.common import ArrayDataModule


class SeriesDataModule(ArrayDataModule):
    kind = "timeseries"
    meta_keys = (
        *("features", "window", "horizon", "season", "target_index"),
        *("mean", "std", "steps_per_day", "units"),
    )

    @property
    def task(self) -> Task:
        m = self.meta
        return Task(
            kind="timeseries",
            in_shape=(m["window"], len(m["features"])),
            horizon=m["horizon"],
            season=m["season"],
            target_index=m["target_index"],
            mean=m["mean"],
            std=m["std"],
        )

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.arrays(split)
        return torch.from_numpy(d["x"]).float(), torch.from_numpy(d["y"]).float()

    def seasonal_naive(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline: each future step repeats the same step one season earlier."""
        season, h = self.meta["season"], self.meta["horizon"]
        last = x[:, -season:, self.meta["target_index"]]
        return last[:, torch.arange(h) % season]
