"""The data stages, `fetch` and `prepare`, one module per kind of data: numpy and scikit-learn
only, so `assay fetch` and `assay prepare` load neither torch, Lightning nor MLflow.

`fetch` brings a data set's raw file into `data/raw/<name>/` (checked against a pinned sha256);
`prepare` turns it into fixed-seed train/val/test splits in `data/<name>/` (`{split}.npz` and
`meta.json`, plus what the kind needs, e.g. the text tokenizer). Both are DVC outputs, each written
whole or not at all. `assay.data` reads the prepared files into DataModules.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from assay.config import FetchConfig, PrepareConfig
from assay.datasets import get_dataset
from assay.paths import DataError, atomic_dir
from assay.preparation import images, ratings, series, tabular, text
from assay.preparation.common import SPLITS, sha256_file, write_splits

__all__ = ["SPLITS", "DataError", "fetch", "kind_of", "prepare", "read_source", "sha256_file"]

_BY_KIND: dict[str, ModuleType] = {
    "image": images,
    "text": text,
    "timeseries": series,
    "tabular": tabular,
    "ratings": ratings,
}


def kind_of(name: str) -> str:
    """The registry's kind of data for `name` (UnknownDataSetError, naming the known ones)."""
    return get_dataset(name).kind


def fetch(name: str, cfg: FetchConfig, root: Path) -> Path:
    """Write `data/raw/<name>/` and return it."""
    kind = kind_of(name)
    out = root / "data" / "raw" / name
    with atomic_dir(out) as tmp:
        _BY_KIND[kind].fetch(name, cfg, tmp)
    return out


def prepare(name: str, cfg: PrepareConfig, root: Path) -> Path:
    """Write `data/<name>/{train,val,test}.npz` and `meta.json`; return the folder."""
    kind = kind_of(name)
    raw = root / "data" / "raw" / name
    if not (raw / "source.json").exists():
        raise FileNotFoundError(
            f"{raw} is missing: run `assay fetch {name}` (or `dvc repro`) first"
        )
    source = read_source(name, raw)
    splits, meta, *extra = _BY_KIND[kind].prepare(name, raw, source, cfg)
    meta = {
        "dataset": name,
        "kind": kind,
        "counts": {s: int(len(next(iter(a.values())))) for s, a in splits.items()},
        **meta,
        "seed": cfg.seed,
        # the whole fetch record (package and version, member, sha256): the prepared folder
        # names its own raw source wherever it travels (`assay lineage`, MLflow's dataset inputs)
        "source": source,
    }
    out = root / "data" / name
    with atomic_dir(out) as tmp:
        write_splits(tmp, splits, meta)
        for filename, blob in (extra[0] if extra else {}).items():
            (tmp / filename).write_bytes(blob)
    return out


def read_source(name: str, raw: Path) -> dict:
    """`data/raw/<name>/source.json`, and the raw file it names, checked against the sha256 the
    fetch recorded: a damaged download is named before prepare reads it."""
    path = raw / "source.json"

    def refetch(f: Path, what: str) -> DataError:
        return DataError(
            f"{f}: {what}; fetch it again: `dvc repro fetch@{name}` (or `assay fetch {name}`)"
        )

    try:
        source = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise refetch(path, f"not valid JSON ({e})") from None
    if not (
        isinstance(source, dict) and all(isinstance(source.get(k), str) for k in ("file", "sha256"))
    ):
        raise refetch(path, "not a JSON object naming the raw `file` and its `sha256`")
    f = raw / source["file"]
    if not f.is_file():
        raise refetch(f, "is missing")
    if sha256_file(f) != source["sha256"]:
        raise refetch(f, f"its sha256 is not the {source['sha256']} recorded in {path.name}")
    return source
