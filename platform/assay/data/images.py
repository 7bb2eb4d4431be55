"""The images DataModule, `ImageDataModule`: the splits `assay.preparation.images` wrote, held
as tensors."""

from __future__ import annotations

import torch

from assay.config.task import Task
from assay.data.common import (
    ArrayDataModule,
)


class ImageDataModule(ArrayDataModule):
    """Prepared image splits as float tensors in [0, 1], (N, C, H, W), and int64 labels."""

    kind = "image"
    meta_keys = ("shape", "classes", "pixel_scale")

    @property
    def task(self) -> Task:
        return Task(
            kind="image",
            in_shape=tuple(self.meta["shape"]),
            num_classes=len(self.meta["classes"]),
            class_names=self.meta["classes"],
        )

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.arrays(split)
        x = torch.from_numpy(d["x"]).float() / self.meta["pixel_scale"]
        return x, torch.from_numpy(d["y"]).long()
