"""Scores per slice of the test split: where a model is worse, and by how much.

fairlearn's `MetricFrame` computes the objective's primary metric per group of each sensitive or
descriptive feature (a classifier's true class; a MovieLens user's gender, age band and
occupation, a film's popularity band). `evaluate` logs the worst group's score and the largest gap
within one feature (`test/slices/worst_<metric>`, `test/slices/gap_<metric>`), writes the table
(`slices.csv`, and as an MLflow table) and a bar chart (`slices.png`). `register.max_slice_gap`
can refuse a champion whose gap is wider.

A group with fewer than `MIN_COUNT` test examples is in the table and the chart but not judged:
its score is mostly noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from assay import plots

MIN_COUNT = 30


@dataclass
class Slices:
    metric: str  # the primary metric's short name: acc, rmse
    mode: str  # max: higher is better
    overall: float
    table: pd.DataFrame  # feature, group, value, count, judged
    worst: tuple[str, str, float] | None  # (feature, group, value) of the worst judged group
    gap: tuple[str, float] | None  # (feature, max - min) of the widest judged feature

    def metrics(self) -> dict[str, float]:
        # how many groups had enough examples to judge: the gate tells "too few to judge"
        # (0) from an objective that has no slices (no such metric)
        out = {f"test/slices/judged_{self.metric}": float(self.table["judged"].sum())}
        if self.worst is not None:
            out[f"test/slices/worst_{self.metric}"] = self.worst[2]
        if self.gap is not None:
            out[f"test/slices/gap_{self.metric}"] = self.gap[1]
        return out


def slice_scores(
    metric: str,
    mode: str,
    fn: Callable[[np.ndarray, np.ndarray], float],
    y_true: np.ndarray,
    y_pred: np.ndarray,
    features: dict[str, np.ndarray],
) -> Slices:
    """`fn(y_true, y_pred)` over each group of each feature (one MetricFrame per feature: the
    groups of one feature are compared with each other, not crossed with the others')."""
    # fairlearn loads scikit-learn (~1 s, and it sets KMP_* variables): when scoring, not on import
    from fairlearn.metrics import MetricFrame, count

    frames = []
    for name, groups in features.items():
        mf = MetricFrame(
            metrics={"value": fn, "count": count},
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=pd.Series(np.asarray(groups).astype(str), name=name),
        )
        part = mf.by_group.reset_index().rename(columns={name: "group"})
        part.insert(0, "feature", name)
        frames.append(part)
    table = pd.concat(frames, ignore_index=True)
    table["count"] = table["count"].astype(int)
    table["value"] = table["value"].astype(float)
    table["judged"] = table["count"] >= MIN_COUNT
    judged = table[table["judged"]]
    worst = gap = None
    if len(judged):
        row = judged.loc[judged["value"].idxmin() if mode == "max" else judged["value"].idxmax()]
        worst = (str(row["feature"]), str(row["group"]), float(row["value"]))
        spans = judged.groupby("feature")["value"].agg(lambda v: float(v.max() - v.min()))
        gap = (str(spans.idxmax()), float(spans.max()))
    return Slices(metric, mode, float(fn(y_true, y_pred)), table, worst, gap)


def write(slices: Slices, out: Path, title: str) -> dict[str, float]:
    """slices.csv and slices.png in `out` (`evaluate`'s folder); the metrics to log."""
    slices.table.to_csv(out / "slices.csv", index=False, float_format="%.6g")
    plots.slice_bars(
        slices.table,
        slices.overall,
        out / "slices.png",
        f"{title}: test {slices.metric} per slice ({'higher' if slices.mode == 'max' else 'lower'}"
        f" is better; hatched: < {MIN_COUNT} examples, not judged)",
        slices.metric,
    )
    return slices.metrics()


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import root_mean_squared_error

    return float(root_mean_squared_error(y_true, y_pred))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y_true, y_pred))


# MovieLens-1M's age bands (MovieLens-100K gives the age in years)
AGE_BANDS = ((0, 18, "under 18"), (18, 25, "18-24"), (25, 35, "25-34"), (35, 45, "35-44"))
AGE_BANDS += ((45, 50, "45-49"), (50, 56, "50-55"), (56, 200, "56+"))
# a film's ratings in the training split
POPULARITY_BANDS = ((0, 10, "< 10 ratings"), (10, 50, "10-49"), (50, 200, "50-199"))
POPULARITY_BANDS += ((200, 10**9, "200+"),)


def band(values: np.ndarray, bands) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for lo, hi, name in bands:
        out[(values >= lo) & (values < hi)] = name
    return out
