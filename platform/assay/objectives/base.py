"""What an objective is, and the registry of them (like `assay.models.registry` for
architectures).

An objective is what a model is trained and judged for: classification, forecast,
reconstruction, anomaly, generation, rating. Each lives in one file of this package and owns
everything that follows from it, so a new objective is one new file:

  primary        the test metric the champion gate compares, and which way is better
  step_metric    the torchmetrics object a model logs per epoch under train/, val/ (and its name)
  loss           the training loss of a plain (out, target) model; families with their own
                 loop (autoencoders, the GAN) compute theirs
  head           the logged inference network around a model's net (softmax, pairs -> ratings)
  score          the test scorer: metrics, plots and tables for `assay evaluate`
  decode         `assay predict`'s table of a model's answers
  output         what the logged model does to its net's answer (clip, add the error), in its card
  callbacks      what a fit needs beyond the common callbacks (the GAN's judge)
  refit          why `train.refit` has no meaning for it (None: it has one)
  step           a self-supervised objective's own training step (`owns_step`): it makes its
                 targets from the inputs (two views of an image, masked tokens) and never reads
                 the labels; `out_features` is then the width of the net's output layer

Architectures declare the objectives they serve per data kind (`OBJECTIVES = {"text":
"classification", "timeseries": "forecast"}`); nothing else switches on an objective's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

Direction = Literal["max", "min"]


@dataclass
class Prediction:
    """`assay predict`'s answer: a table and the raw output."""

    objective: str
    columns: list[str]  # the table / CSV header
    rows: list[list]  # one per input example
    array: np.ndarray  # the raw output (probabilities, forecasts, images, ...)
    images: bool = False  # array is images (N, C, H, W): written as .npy and a PNG grid


class Objective:
    """The defaults are a plain regression: MSE, no per-epoch metric, the net as it is."""

    name: ClassVar[str]
    primary: ClassVar[tuple[str, Direction]]
    step_metric_name: ClassVar[str | None] = None
    refit: ClassVar[str | None] = None  # why a refit has no meaning; None: it has one
    # The smallest real run of it (train settings: dataset, arch, ...), for the test that takes
    # every registered objective through train -> evaluate -> register -> predict, and the
    # objectives whose smoke runs it needs registered first (the GAN's judge: a classifier).
    smoke: ClassVar[dict[str, Any]]
    smoke_after: ClassVar[tuple[str, ...]] = ()
    # How far `assay reproduce` lets the primary metric move (absolute): the seed-to-seed range
    # of a default run, measured by bench/seed_spread.py (a same-seed rerun lands far closer).
    reproduce_tolerance: ClassVar[float]

    owns_step: ClassVar[bool] = False  # True: `step` replaces the (out, target) step

    def out_features(self, task) -> int | None:
        """The width of the net's output layer; None: the data's (classes, horizon)."""
        return None

    def step(self, module, batch, stage: str, generator=None) -> torch.Tensor:
        """A self-supervised objective's train/val/test step on `module`: returns the loss.
        `generator` draws its random views or masks (val and test: the same each epoch; train:
        None, the seeded global one)."""
        raise NotImplementedError

    def step_metric(self, task) -> Any:
        """A fresh torchmetrics metric logged as <stage>/<step_metric_name>, or None."""
        return None

    def loss(self, out: torch.Tensor, target: torch.Tensor, task) -> torch.Tensor:
        return F.mse_loss(out, target)

    def predict_output(self, out: torch.Tensor) -> torch.Tensor:
        """What Lightning's predict_step returns for the net's output."""
        return out

    def head(self, net: nn.Module) -> nn.Module:
        """The logged inference network: one array in, one array out."""
        return net

    def score(self, model, dm, out: Path, title: str, cfg, root: Path) -> tuple[dict, int]:
        """Test metrics (and the number of test examples); pictures and tables go in `out`."""
        raise NotImplementedError

    def output(self, task) -> dict:
        """What the logged model does to its net's answer (`assay.tracking.contract.apply`):
        {"clip": [lo, hi]} and/or {"error": "mse"} (the answer becomes the output and each
        input's error). Written into the model's card, so serving needs no objective code."""
        return {}

    def decode(self, out, raw, card: dict) -> Prediction:
        """`assay predict`'s table: default, one row of values per example."""
        out = np.asarray(out)
        cols = ["index", *[f"y{j}" for j in range(out.shape[1])]] if out.ndim == 2 else ["index"]
        rows = [[i, *np.ravel(r).tolist()] for i, r in enumerate(out)]
        return Prediction(self.name, cols, rows, out)

    def callbacks(self, model, cfg, root: Path) -> list:
        """Callbacks a fit needs beyond the common ones. Built before any run starts, so what
        they load (a judge) fails before it costs a run."""
        return []

    def example(self, model, dm) -> np.ndarray | None:
        """The logged model's input example; None: the contract's raw example of the data."""
        return None


_REGISTRY: dict[str, Objective] = {}


class UnknownObjectiveError(KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: one instance of `cls` under `cls.name`. Duplicates are refused."""
    if cls.name in _REGISTRY:
        raise ValueError(f"objective {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def get_objective(name: str) -> Objective:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownObjectiveError(
            f"unknown objective {name!r}; known: {', '.join(list_objectives())}"
        ) from None


def list_objectives() -> list[str]:
    return sorted(_REGISTRY)


# ------------------------------------------------------------------ helpers scorers share
def batched(fn, *tensors: torch.Tensor, size: int = 1024) -> torch.Tensor:
    """fn over the tensors in chunks of `size`, without gradients."""
    with torch.no_grad():
        parts = zip(*(torch.split(t, size) for t in tensors), strict=True)
        return torch.cat([fn(*p) for p in parts])


def output_layer(net: nn.Module) -> tuple[str, nn.Linear] | None:
    """The net's output head: its last linear layer, when that is a direct part of it (what
    transfer keeps apart from the encoder, and what a self-supervised objective trains its
    projection with). None: there is no such layer."""
    linear = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linear or "." in linear[-1][0]:
        return None
    return linear[-1]


def features(net: nn.Module, x: torch.Tensor, size: int = 1024) -> torch.Tensor:
    """What the net's output head reads (B, D): the encoder's representation of `x`."""
    found = output_layer(net)
    if found is None:
        raise ValueError(f"{type(net).__name__} has no output layer of its own")
    seen: list[torch.Tensor] = []
    hook = found[1].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    was = net.training
    net.eval()
    try:
        batched(net, x, size=size)
    finally:
        hook.remove()
        net.train(was)
    return torch.cat(seen)
