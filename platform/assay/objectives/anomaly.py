"""Anomaly detection: a model trained on normal rows scores how abnormal each row is (an
autoencoder: its reconstruction error). ROC-AUC per epoch; scored on test by ROC-AUC (the gate's
metric) and PR-AUC, with the score histogram per class and the latent space."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from assay import plots
from assay.objectives.base import Objective, Prediction, batched, register_objective
from assay.objectives.figures import latent_png


class ScoreHead(nn.Module):
    """rows (B, features) -> anomaly scores (B,): the net's own `score`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.score(x)


@register_objective
class Anomaly(Objective):
    name = "anomaly"
    primary = ("test/roc_auc", "max")
    step_metric_name = "roc_auc"
    # the range of test/roc_auc over seeds 0, 1, 2 of the run shuttle-autoencoder (quantile
    # scaling, an ensemble of five): 0.9993, 0.9991, 0.9995 (bench/seed_spread.py, 2026-12-07)
    reproduce_tolerance = 0.0004
    smoke = {"dataset": "shuttle", "arch": "autoencoder_tiny"}

    def step_metric(self, task):
        return BinaryAUROC()

    def head(self, net):
        return ScoreHead(net)

    def score(self, model, dm, out: Path, title: str, cfg, root: Path):
        x, y = dm.load_split("test")
        scores = batched(model.anomaly_score, x)
        metrics = {
            "test/roc_auc": float(binary_auroc(scores, y)),
            "test/pr_auc": float(binary_average_precision(scores, y)),
            "test/mse_normal": float(scores[y == 0].mean()),
            "test/mse_anomaly": float(scores[y == 1].mean()),
        }
        plots.score_histogram(
            scores.numpy(),
            y.numpy(),
            out / "scores.png",
            f"{title}: ROC-AUC {metrics['test/roc_auc']:.4f}, PR-AUC {metrics['test/pr_auc']:.4f}",
        )
        names = ["normal", "anomaly"]
        latent_png(model, x, y.numpy(), out, f"{title}: test latent space", names)
        return metrics, len(y)

    def decode(self, out, raw, card):
        rows = [[i, float(v)] for i, v in enumerate(out)]
        return Prediction(self.name, ["index", "anomaly_score"], rows, out)
