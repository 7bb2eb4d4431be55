"""Data stages and DataModules, one module per kind of data.

`fetch` brings a data set's raw file into `data/raw/<name>/` (checked against a pinned sha256);
`prepare` turns it into fixed-seed train/val/test splits in `data/<name>/` (`{split}.npz` and
`meta.json`, plus what the kind needs, e.g. the text tokenizer). Both are DVC outputs, each written
whole or not at all. `datamodule(name, root)` reads only the prepared files.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from assay.config import DATASET_KINDS, DATASETS, FetchConfig, PrepareConfig
from assay.data import images, ratings, series, tabular, text
from assay.data.common import SPLITS, ArrayDataModule, read_meta, sha256_file, write_splits
from assay.data.images import ImageDataModule
from assay.paths import atomic_dir

__all__ = [
    "SPLITS",
    "ArrayDataModule",
    "ImageDataModule",
    "datamodule",
    "fetch",
    "prepare",
    "read_meta",
    "sha256_file",
]

_BY_KIND: dict[str, ModuleType] = {
    "image": images,
    "text": text,
    "timeseries": series,
    "tabular": tabular,
    "ratings": ratings,
}
_MODULES = {
    "image": images.ImageDataModule,
    "text": text.TextDataModule,
    "timeseries": series.SeriesDataModule,
    "tabular": tabular.TabularDataModule,
    "ratings": ratings.RatingsDataModule,
}


def _kind(name: str) -> str:
    if name not in DATASET_KINDS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASET_KINDS[name]


def fetch(name: str, cfg: FetchConfig, root: Path) -> Path:
    """Write `data/raw/<name>/` and return it."""
    kind = _kind(name)
    out = root / "data" / "raw" / name
    with atomic_dir(out) as tmp:
        _BY_KIND[kind].fetch(name, cfg, tmp)
    return out


def prepare(name: str, cfg: PrepareConfig, root: Path) -> Path:
    """Write `data/<name>/{train,val,test}.npz` and `meta.json`; return the folder."""
    kind = _kind(name)
    raw = root / "data" / "raw" / name
    if not (raw / "source.json").exists():
        raise FileNotFoundError(
            f"{raw} is missing: run `assay fetch {name}` (or `dvc repro`) first"
        )
    source = json.loads((raw / "source.json").read_text())
    splits, meta, *extra = _BY_KIND[kind].prepare(name, raw, source, cfg)
    meta = {
        "dataset": name,
        "kind": kind,
        "counts": {s: int(len(next(iter(a.values())))) for s, a in splits.items()},
        **meta,
        "seed": cfg.seed,
        "source": {"file": source["file"], "sha256": source["sha256"]},
    }
    out = root / "data" / name
    with atomic_dir(out) as tmp:
        write_splits(tmp, splits, meta)
        for filename, blob in (extra[0] if extra else {}).items():
            (tmp / filename).write_bytes(blob)
    return out


def datamodule(
    name: str, root: Path, batch_size: int = 128, seed: int = 0, refit: bool = False
) -> ArrayDataModule:
    """The DataModule for a prepared data set, by its kind. `refit`: it trains on train + val."""
    return _MODULES[_kind(name)](name, root, batch_size=batch_size, seed=seed, refit=refit)
