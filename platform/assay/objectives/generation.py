"""Generation: a GAN's images, judged by Assay's own registered classifier of the same data set
(`assay.generation`): the Fréchet distance in its feature space per epoch and on test (the gate's
metric), the share it recognises, and sample grids. The logged model maps codes to images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from assay import plots
from assay.generation import GenerationMonitor, Judge
from assay.objectives.base import Objective, Prediction, register_objective


@register_objective
class Generation(Objective):
    name = "generation"
    primary = ("test/fd", "min")
    refit = (
        "a GAN's validation split only feeds its judge (the Fréchet distance of generated "
        "samples), so there is nothing to refit on"
    )
    # the range of test/fd over seeds 0, 1, 2 of a digits gan_tiny, 20 epochs, judged by a
    # digits cnn_tiny: 8.9525, 15.0648, 6.2790 (bench/seed_spread.py): a GAN's seed matters
    reproduce_tolerance = 8.79
    smoke = {  # judged by the classification smoke run, registered as digits-cnn_tiny
        "dataset": "digits",
        "arch": "gan_tiny",
        "batch_size": 64,
        "models": {"gan_tiny": {"judge": "models:/{dataset}-cnn_tiny@champion"}},
    }
    smoke_after = ("classification",)

    def score(self, model, dm, out: Path, title: str, cfg, root: Path):
        judge = Judge.load(model.config.judge.format(dataset=cfg.train.dataset), cfg, root)
        x, _ = dm.load_split("test")
        n = min(len(x), model.config.eval_samples)
        fake, classes = model.generate(n, seed=cfg.train.seed, with_classes=True)
        metrics = {
            "test/fd": judge.frechet(x[:n], fake),
            **{f"test/{k}": v for k, v in judge.scores(fake, classes).items()},
        }
        plots.image_grid(
            [fake[:64].numpy()],
            out / "samples.png",
            f"{title}: FD {metrics['test/fd']:.2f}, recognised {metrics['test/recognised']:.1%}",
        )
        return metrics, n

    def callbacks(self, model, cfg, root: Path) -> list:
        return [GenerationMonitor.from_config(model, cfg, root)]  # a missing judge fails here

    def example(self, model, dm) -> np.ndarray:
        return model.inference_example(torch.from_numpy(dm.example_input(2))).numpy()

    def decode(self, out, raw, card):
        """Images from codes; a conditional GAN's rows name the class each code asked for."""
        k, width = card["input"]["classes"], card["input"]["shape"][0]
        if k:
            z = np.asarray(raw).reshape(len(out), width)
            rows = [[i, int(c)] for i, c in enumerate(z[:, width - k :].argmax(1))]
            return Prediction(self.name, ["index", "class"], rows, out, True)
        return Prediction(self.name, ["index"], [[i] for i in range(len(out))], out, True)
