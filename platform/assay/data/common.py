"""The DataModule every kind of data shares: prepared splits (`assay.preparation`) in memory as
tensors, checked when read."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, TensorDataset

from assay.config.common import ConfigError
from assay.config.task import Task
from assay.errors import UserError
from assay.paths import DataError
from assay.preparation.common import SPLITS


def damaged(path: Path, name: str, what: str) -> DataError:
    """The error for a prepared file of data set `name` that cannot be used as it is."""
    return DataError(
        f"{path}: {what}; rebuild it: `dvc repro prepare@{name}` (or `assay prepare {name}`)"
    )


def read_meta(name: str, root: Path, required: tuple[str, ...] = ()) -> dict:
    """`data/<name>/meta.json`, checked: a JSON object with `kind`, each split's row count in
    `counts`, and the `required` keys."""
    path = root / "data" / name / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path.parent} is not prepared: run `dvc repro prepare@{name}` "
            f"(or `assay fetch {name} && assay prepare {name}`)"
        )
    try:
        meta = json.loads(path.read_bytes())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise damaged(path, name, f"not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise damaged(path, name, f"holds a JSON {type(meta).__name__}, not an object")
    missing = [k for k in ("kind", "counts", *required) if k not in meta]
    if missing:
        raise damaged(path, name, f"lacks {', '.join(map(repr, missing))}")
    counts = meta["counts"]
    if not (
        isinstance(counts, dict)
        and all(type(counts.get(s)) is int and counts[s] >= 0 for s in SPLITS)
    ):
        raise damaged(
            path,
            name,
            f"counts is {counts!r}; it must give the rows of each of {', '.join(SPLITS)}",
        )
    return meta


class Tensors(TensorDataset):
    """A TensorDataset that hands a DataLoader a whole batch at once (`__getitems__`, which
    torch's fetcher calls when a dataset has it): one indexing per tensor instead of one per
    example and a `torch.stack`. The batches are the same, in the same order. Measured with
    MovieLens' batches of 1024: the per-example path was most of an epoch's time (254k
    `__getitem__` calls in three epochs of matrix factorisation, 2.8 s of 20 under cProfile).

    Its `__getitems__` gives one tuple of batch tensors, not torch's list of examples: only a
    DataLoader with `as_batch` reads it (`ArrayDataModule._loader`). Wrapped in a `Subset`, it
    would hand torch's default collate a batch it cannot read; a `ConcatDataset` has no
    `__getitems__` and falls back to one example at a time."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.as_tensor(indices)
        return tuple(t[rows] for t in self.tensors)


def as_batch(batch):
    """The collate function for `Tensors`: its batch is made already."""
    return batch


# A process that trains one model after another on the same data (a sweep's Ray worker runs trial
# after trial) reads each split once: the tensors are kept, keyed by the files they came from.
# Training and the scorers never write into them. At most two data sets are held.
_SPLITS_CACHE: dict[tuple, Tensors] = {}


class FewShotError(UserError, ValueError):
    """`train.labels_per_class` larger than a class of the training split has examples."""


def few_shot_rows(y: np.ndarray, k: int, seed: int, where: str) -> np.ndarray:
    """Row indices holding `k` examples of each class of `y`, drawn with `seed` (stratified:
    the same `k` for every class), in their original order."""
    classes, counts = np.unique(y, return_counts=True)
    if counts.min() < k:
        short = ", ".join(f"{c} has {n}" for c, n in zip(classes, counts, strict=True) if n < k)
        raise FewShotError(
            f"train.labels_per_class is {k}, but in {where} class {short} example(s): "
            f"at most {counts.min()} (the smallest class)"
        )
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(y == c), size=k, replace=False) for c in classes]
    return np.sort(np.concatenate(picked))


def check_few_shot(objective: str, t) -> None:
    """`train.labels_per_class` is for classifiers (`objective`: the model's), and not with a
    refit (which would train on every label of val). Checked by training.preflight before a run,
    not in the config: a params.yaml `runs` entry of another objective must not make it invalid."""
    k = t.labels_per_class
    if objective != "classification":
        raise ConfigError(
            [
                f"train.labels_per_class: {k}, but {t.arch} on {t.dataset} trains {objective}: "
                "only a classifier learns from K labels per class (leave it null)"
            ]
        )
    if t.refit:
        raise ConfigError(
            [
                f"train.labels_per_class: {k} with train.refit: the refit would train on every "
                "label of the val split; set train.refit=false"
            ]
        )


def _split_tensors(dm: ArrayDataModule, split: str) -> tuple[torch.Tensor, ...]:
    tensors = dm.tensors(split)
    if split != "train" or dm.labels_per_class is None:
        return tensors
    where = str(dm.folder / "train.npz")
    rows = torch.from_numpy(few_shot_rows(tensors[-1].numpy(), dm.labels_per_class, dm.seed, where))
    return tuple(t[rows] for t in tensors)


def _cached_split(dm: ArrayDataModule, split: str) -> Tensors:
    f = dm.folder / f"{split}.npz"
    stat = f.stat() if f.exists() else None
    key = (type(dm).__name__, str(f.resolve()), split, stat and (stat.st_mtime_ns, stat.st_size))
    if split == "train" and dm.labels_per_class is not None:
        key += (dm.labels_per_class, dm.seed)
    if stat is None:  # not a plain .npz split: no caching
        return Tensors(*_split_tensors(dm, split))
    if key not in _SPLITS_CACHE:
        folders = {k[1].rsplit("/", 1)[0] for k in _SPLITS_CACHE}
        if len(folders) >= 2 and str(f.resolve().parent) not in folders:
            _SPLITS_CACHE.clear()
        _SPLITS_CACHE[key] = Tensors(*_split_tensors(dm, split))
    return _SPLITS_CACHE[key]


class ArrayDataModule(pl.LightningDataModule):
    """Prepared splits held in memory as tensors; batches are tuples (inputs..., target).

    A kind's subclass says how the arrays become tensors (`tensors`) and what the model must
    know (`task`). `example_input` is what the logged MLflow model takes (one array)."""

    kind: ClassVar[str]
    eval_batch_size: ClassVar[int] = 1024
    # what meta.json must hold beyond kind and counts, and the arrays each split's .npz must
    # hold, one row per example: checked when read, so a damaged file is named, not a KeyError
    meta_keys: ClassVar[tuple[str, ...]] = ()
    row_arrays: ClassVar[tuple[str, ...]] = ("x", "y")

    def __init__(
        self,
        name: str,
        root: Path,
        batch_size: int = 128,
        seed: int = 0,
        refit: bool = False,
        labels_per_class: int | None = None,
    ):
        super().__init__()
        self.name, self.root, self.batch_size, self.seed = name, Path(root), batch_size, seed
        # `train.labels_per_class`: the training split keeps K rows per class (few-shot)
        self.labels_per_class = labels_per_class
        # `train.refit`: the training loader serves `refit_set()`, train + val
        self.refit = refit
        self.meta = read_meta(name, self.root, self.meta_keys)
        if self.meta["kind"] != self.kind:
            raise damaged(
                self.folder / "meta.json",
                name,
                f"kind is {self.meta['kind']!r}; {name} is {self.kind!r} data",
            )
        self._data: dict[str, Dataset] = {}

    @property
    def folder(self) -> Path:
        return self.root / "data" / self.name

    @property
    def task(self) -> Task:
        raise NotImplementedError

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        path = self.folder / f"{split}.npz"
        try:
            with open(path, "rb") as f:
                head = f.read(4)
            if head == b"PK\x03\x04":  # a zip archive, as np.savez writes: else see below
                with np.load(path) as d:
                    arrays = {k: d[k] for k in d.files}  # reads (and inflates) every array
        except FileNotFoundError:
            raise damaged(path, self.name, "is missing") from None
        # numpy lets each layer's error through: the zip's, zlib's, its own header parser's
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
            what = f"cut short or corrupt: numpy cannot read it ({type(e).__name__}: {e})"
            raise damaged(path, self.name, what) from None
        if head != b"PK\x03\x04":  # numpy would guess it a pickle and suggest allow_pickle
            raise damaged(path, self.name, "is empty" if not head else "is not an .npz archive")
        self._check_rows(path, split, arrays)
        return arrays

    def required_arrays(self, split: str) -> tuple[str, ...]:
        return self.row_arrays

    def _check_rows(self, path: Path, split: str, arrays: dict[str, np.ndarray]) -> None:
        missing = [k for k in self.required_arrays(split) if k not in arrays]
        if missing:
            held = ", ".join(arrays) or "none"
            raise damaged(path, self.name, f"lacks the arrays {', '.join(missing)} (holds {held})")
        want = self.meta["counts"][split]
        for k in self.row_arrays:
            if arrays[k].shape[:1] != (want,):
                rows = arrays[k].shape[0] if arrays[k].ndim else "no"
                raise damaged(
                    path,
                    self.name,
                    f"array {k!r} has {rows} rows; meta.json counts {split}: {want}",
                )

    def verify(self, splits: tuple[str, ...] = SPLITS) -> None:
        """Read each split once, into the cache the fit and the scorers then use: a damaged file
        fails here, before any run opens, naming itself and how to rebuild it."""
        for split in splits:
            _cached_split(self, split)

    def tensors(self, split: str) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def load_split(self, split: str) -> tuple[torch.Tensor, ...]:
        return _cached_split(self, split).tensors

    def example_input(self, n: int = 4) -> np.ndarray:
        return self.tensors("val")[0][:n].numpy()

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self._data:
                self._data[split] = _cached_split(self, split)
        if self.refit and "refit" not in self._data:
            self._data["refit"] = self.refit_set()

    def refit_set(self) -> Dataset:
        """What a refit trains on: the training split and the validation split. A kind whose
        training split is a subset of rows (anomalies: normal ones) or whose tensors depend on
        the whole training set (ratings: each one's place in its user's history) says so."""
        return ConcatDataset([self._data["train"], self._data["val"]])

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        self.setup()
        g = torch.Generator().manual_seed(self.seed)
        data = self._data[split]
        return DataLoader(
            data,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            generator=g if shuffle else None,
            collate_fn=as_batch if isinstance(data, Tensors) else None,  # else torch's default
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("refit" if self.refit else "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.eval_batch_size)
