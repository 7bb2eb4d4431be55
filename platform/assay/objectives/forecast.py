"""Forecast: the next `horizon` values of the target series. MSE in standard units (the data's
scale is moot), MAE in the series' units per epoch; scored on test by RMSE (the gate's metric)
and MAE beside the seasonal-naive forecast of the same windows, with a week of day-ahead
forecasts drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError

from assay import plots
from assay.objectives.base import Objective, Prediction, batched, register_objective
from assay.objectives.figures import attention_png


@register_objective
class Forecast(Objective):
    name = "forecast"
    primary = ("test/rmse", "min")
    step_metric_name = "mae"
    # the range of test/rmse over seeds 0, 1, 2 of the run elecdemand-lstm:
    # 0.4022, 0.4026, 0.3949 (bench/seed_spread.py)
    reproduce_tolerance = 0.0077
    smoke = {"dataset": "elecdemand", "arch": "lstm_tiny"}

    def step_metric(self, task):
        return MeanAbsoluteError()  # raw units (GW for electricity demand)

    def loss(self, out, target, task):
        scale = task.std[task.target_index]
        return F.mse_loss(out / scale, target / scale)

    def score(self, model, dm, out: Path, title: str, cfg, root: Path):
        x, y = dm.load_split("test")
        pred = batched(model, x)
        naive = dm.seasonal_naive(x)

        def rmse(p):
            return float(torch.sqrt(torch.mean((p - y) ** 2)))

        def mae(p):
            return float(torch.mean(torch.abs(p - y)))

        metrics = {
            "test/mae": mae(pred),
            "test/rmse": rmse(pred),
            "test/naive_mae": mae(naive),
            "test/naive_rmse": rmse(naive),
        }
        metrics["test/skill"] = 1 - metrics["test/rmse"] / metrics["test/naive_rmse"]
        # A week of the test period as consecutive day-ahead forecasts (one window per day).
        h = dm.meta["horizon"]
        days = np.arange(0, min(len(y), 7 * dm.meta["steps_per_day"]), h)
        actual, ours, base = (a[days].reshape(-1).numpy() for a in (y, pred, naive))
        plots.forecast(
            actual,
            {title: ours, f"seasonal naive ({dm.meta['season']} steps)": base},
            out / "forecast.png",
            f"{title}: day-ahead forecasts, RMSE {metrics['test/rmse']:.3f} vs naive "
            f"{metrics['test/naive_rmse']:.3f} {dm.meta['units']}",
            dm.meta["units"],
        )
        lines = "".join(
            f"{i},{a:.5f},{o:.5f},{b:.5f}\n"
            for i, (a, o, b) in enumerate(zip(actual, ours, base, strict=True))
        )
        (out / "forecast.csv").write_text("step,actual,forecast,seasonal_naive\n" + lines)
        attention_png(model, x[:2], dm, out, title)
        return metrics, len(y)

    def decode(self, out, raw, card):
        cols = ["index", *[f"t+{h + 1}" for h in range(out.shape[1])]]
        return Prediction(self.name, cols, [[i, *map(float, r)] for i, r in enumerate(out)], out)
