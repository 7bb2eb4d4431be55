"""Reconstruction: an autoencoder's images back from their codes. Scored on test by MSE (the
gate's metric) in [0, 1] pixels, with originals beside reconstructions and the latent space;
the logged model answers both the reconstruction and each image's error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from assay import plots
from assay.objectives.base import Objective, Prediction, batched, register_objective
from assay.objectives.figures import latent_png


@register_objective
class Reconstruction(Objective):
    name = "reconstruction"
    primary = ("test/mse", "min")
    # the range of test/mse over seeds 0, 1, 2 of the run mnist-autoencoder:
    # 0.0097, 0.0095, 0.0097 (bench/seed_spread.py)
    reproduce_tolerance = 0.0002
    smoke = {"dataset": "digits", "arch": "autoencoder_tiny"}

    def score(self, model, dm, out: Path, title: str, cfg, root: Path):
        x, y = dm.load_split("test")
        recon = batched(model.reconstruct, x)
        metrics = {"test/mse": float(torch.mean((recon - x) ** 2))}
        plots.image_grid(
            [x[:10].numpy(), recon[:10].numpy()],
            out / "reconstructions.png",
            f"{title}: test MSE {metrics['test/mse']:.4f}",
            ["original", "reconstruction"],
        )
        sub = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:3000]
        names = dm.task.class_names
        latent_png(model, x[sub], y[sub].numpy(), out, f"{title}: test latent space", names)
        return metrics, len(y)

    def output(self, task):
        return {"error": "mse"}

    def decode(self, out, raw, card):
        rows = [[i, float(e)] for i, e in enumerate(out["mse"])]
        return Prediction(
            self.name, ["index", "mse"], rows, np.asarray(out["reconstruction"]), True
        )
