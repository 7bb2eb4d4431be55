"""The DataModules, one module per kind of data, over the splits `assay.preparation` wrote.

`datamodule(name, root)` reads only the prepared files (`data/<name>/`). `fetch` and `prepare`
live in `assay.preparation` (no torch) and are named here too.
"""

from __future__ import annotations

from pathlib import Path

from assay.data.common import ArrayDataModule, read_meta
from assay.data.images import ImageDataModule
from assay.data.ratings import RatingsDataModule
from assay.data.series import SeriesDataModule
from assay.data.tabular import TabularDataModule
from assay.data.text import TextDataModule
from assay.paths import DataError
from assay.preparation import SPLITS, fetch, kind_of, prepare, sha256_file

__all__ = [
    "SPLITS",
    "ArrayDataModule",
    "DataError",
    "ImageDataModule",
    "datamodule",
    "fetch",
    "prepare",
    "read_meta",
    "sha256_file",
]

_MODULES = {
    "image": ImageDataModule,
    "text": TextDataModule,
    "timeseries": SeriesDataModule,
    "tabular": TabularDataModule,
    "ratings": RatingsDataModule,
}


def datamodule(name: str, root: Path, **options) -> ArrayDataModule:
    """The DataModule for a prepared data set, by its kind; `options` are its constructor's
    (batch_size, seed, refit: train + val, labels_per_class: K rows per class of train)."""
    return _MODULES[kind_of(name)](name, root, **options)
