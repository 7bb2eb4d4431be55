"""What every architecture shares: the data task it serves, the optimiser config, the module.

A model file keeps the anatomy of STYLE.md: a pydantic `Config`, the plain `nn.Module`, the
LightningModule that wraps it (subclassing `AssayModule` here), then its registered presets.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric, Metric

from assay.config.architectures import Activation
from assay.config.common import StrictModel
from assay.config.schema import OptimConfig
from assay.config.task import Task
from assay.objectives import Objective, get_objective

# Logged models pickled these from here; they now live with their objectives.
from assay.objectives.classification import SoftmaxHead  # noqa: F401
from assay.objectives.rating import PairsHead  # noqa: F401

__all__ = ["ACTIVATIONS", "Activation", "AssayModule", "OptimConfig", "StrictModel", "Task"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
        )
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class AssayModule(pl.LightningModule):
    """What every architecture shares: config, data task, optimiser, steps and metrics.

    A subclass gives `Config` (its settings class from `assay.config.architectures`) and
    `build_net()`; `@register_model` sets `OBJECTIVES` from the architecture's declaration there
    (data kind -> the registered objective it serves, e.g. an LSTM: {"text": "classification",
    "timeseries": "forecast"}) and `PRETRAINS` (kind -> the self-supervised objectives it may train
    for instead, `objective`; the net's output layer is then `out_features` wide). `build_net()`
    gives a plain `nn.Module` that takes raw inputs and returns logits, forecasts or ratings. The
    objective (`assay.objectives`) gives the loss, the per-epoch metric and the logged inference
    head; families with their own training loop (autoencoders, the GAN) override the steps. Nothing
    here knows about MLflow, W&B, DVC or Ray.
    """

    Config: ClassVar[type[StrictModel]]
    OBJECTIVES: ClassVar[dict[str, str]] = {}
    PRETRAINS: ClassVar[dict[str, list[str]]] = {}  # kind -> self-supervised objectives
    # What ModelCheckpoint and EarlyStopping watch, and which way is better.
    monitor: ClassVar[tuple[str, Literal["max", "min"]]] = ("val/loss", "min")

    def __init__(self, config: Any, task: Any, optim: Any = None, objective: str = "auto"):
        super().__init__()
        # Checkpoints reload through these plain dicts; the trackers get flattened params instead.
        self.config = self.Config.model_validate(config)
        self.task = Task.model_validate(task)
        self.optim = OptimConfig.model_validate(optim or {})
        if self.task.kind not in self.OBJECTIVES:
            raise ValueError(
                f"{type(self).__name__} trains on {', '.join(self.OBJECTIVES)} data, "
                f"not {self.task.kind}"
            )
        allowed = [self.OBJECTIVES[self.task.kind], *self.PRETRAINS.get(self.task.kind, [])]
        if objective not in ("auto", *allowed):
            raise ValueError(f"{type(self).__name__} trains for {allowed}, not {objective!r}")
        self.objective: Objective = get_objective(allowed[0] if objective == "auto" else objective)
        self.save_hyperparameters(
            {
                "config": self.config.model_dump(),
                "task": self.task.model_dump(),
                "optim": self.optim.model_dump(),
                "objective": self.objective.name,
            },
            logger=False,
        )
        self.net = self.build_net()
        self.metrics = nn.ModuleDict(
            {s: m for s in ("train_", "val_", "test_") if (m := self._metric()) is not None}
        )
        # the epoch's mean loss, weighted by batch size (over every DDP worker too)
        self.epoch_loss = nn.ModuleDict({s: MeanMetric() for s in ("train_", "val_", "test_")})
        self._registered: set[str] = set()  # what `log_epoch` handed Lightning this epoch
        self._draws: dict[str, torch.Generator] = {}  # val/test: seeded at each epoch's start

    @property
    def primary_metric(self) -> tuple[str, str]:
        return self.objective.primary

    @property
    def out_features(self) -> int:
        """The width of the net's output layer: the classes, unless the objective says (a
        contrastive projection, a vocabulary)."""
        return self.objective.out_features(self.task) or self.task.num_classes

    def build_net(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.net(*inputs)

    # ---------------------------------------------------------------------------------- steps
    def _metric(self):
        return self.objective.step_metric(self.task)

    def _l1(self) -> torch.Tensor:
        # Weights only: biases and norm scales are not what an L1 penalty is meant to sparsify.
        return sum(p.abs().sum() for n, p in self.named_parameters() if p.ndim > 1)

    def _loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.objective.loss(out, target, self.task)

    def _step(self, batch, stage: str) -> torch.Tensor:
        if self.objective.owns_step:  # self-supervised: the objective makes its own targets
            loss = self.objective.step(self, batch, stage, self._draws.get(stage))
            return loss + self.optim.l1 * self._l1() if stage == "train" and self.optim.l1 else loss
        *inputs, target = batch
        out = self(*inputs)
        loss = self._loss(out, target)
        self.epoch_loss[stage + "_"].update(loss.detach(), weight=target.shape[0])
        self.log_epoch(f"{stage}/loss", self.epoch_loss[stage + "_"], prog_bar=True)
        if stage + "_" in self.metrics:
            metric = self.metrics[stage + "_"]
            metric.update(out, target)
            name = f"{stage}/{self.objective.step_metric_name}"
            self.log_epoch(name, metric, prog_bar=stage != "train")
        if stage == "train" and self.optim.l1 > 0:
            loss = loss + self.optim.l1 * self._l1()
        return loss

    def log_epoch(self, name: str, metric: Metric, prog_bar: bool = False) -> None:
        """Log `metric`, a torchmetrics object this module updates at every batch, as the epoch's
        value of `name`: Lightning computes it at the epoch's end over every batch (synced over
        DDP workers) and resets it. Handed over once an epoch, not at every batch as usual: each
        `self.log` call costs Lightning's bookkeeping ~1 ms (it moves its record to the device),
        5 % of an MNIST CNN training step here (41.7 -> 39.7 ms, medians of 5 interleaved runs),
        more of a small model's."""
        if name in self._registered:
            return
        self.log(name, metric, on_step=False, on_epoch=True, prog_bar=prog_bar)
        self._registered.add(name)

    def _new_epoch(self, stage: str) -> None:
        self._registered = {k for k in self._registered if not k.startswith(f"{stage}/")}

    def on_train_epoch_start(self) -> None:
        self._new_epoch("train")

    def on_validation_epoch_start(self) -> None:
        self._new_epoch("val")
        # a self-supervised objective's random views or masks: the same ones every epoch, so
        # val/loss (which picks the best epoch) compares epochs, not draws
        self._draws["val"] = torch.Generator().manual_seed(0)

    def on_test_epoch_start(self) -> None:
        self._new_epoch("test")
        self._draws["test"] = torch.Generator().manual_seed(0)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        *inputs, _ = batch
        out = self(*inputs)
        return self.objective.predict_output(out)

    def configure_optimizers(self):
        return self.optimizer_and_schedule(self.parameters())

    def optimizer_and_schedule(self, params, cfg: OptimConfig | None = None) -> dict:
        cfg = cfg or self.optim
        opt = make_optimizer(params, cfg)
        if cfg.scheduler == "none":
            return {"optimizer": opt}
        if cfg.scheduler == "onecycle":
            total = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------------------ inference
    def inference_model(self) -> nn.Module:
        """The plain network logged to MLflow; one array in, one out (see `assay predict`):
        the objective's head around the net (classification: probabilities (B, K); rating: (B,)
        for (B, 2) [user, item] pairs). Families with other outputs override this."""
        return self.objective.head(self.net).eval()

    def inference_example(self, example: torch.Tensor) -> torch.Tensor:
        """An input for the MLflow signature, from the data's own example (the GAN: codes)."""
        return example

    def card(self) -> dict:
        """What `assay predict` must know about this model's inputs beyond the data's meta (the
        GAN: how its codes are made); stored in the logged model's assay.json."""
        return {}


class ImageClassifier(AssayModule):
    """Softmax classifier over images (B, C, H, W): the MLP and the CNN."""


class Standardize(nn.Module):
    """(x - mean) / std per feature (last axis), with the training split's statistics as buffers:
    the logged model takes raw units."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor, index: int | None = None) -> torch.Tensor:
        if index is None:
            return z * self.std + self.mean
        return z * self.std[index] + self.mean[index]


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """np.interp per row: x (F, B) at the knots xp (F, L, non-decreasing) of values fp (F, L),
    flat beyond the ends. (torch has no interp.)"""
    x = torch.minimum(torch.maximum(x, xp[:, :1]), xp[:, -1:]).contiguous()
    i = torch.searchsorted(xp.contiguous(), x, right=True).clamp(1, xp.shape[1] - 1)
    x0, x1 = xp.gather(1, i - 1), xp.gather(1, i)
    f0, f1 = fp.gather(1, i - 1), fp.gather(1, i)
    w = torch.where(x1 > x0, (x - x0) / (x1 - x0).clamp_min(1e-12), torch.ones_like(x))
    return f0 + w.clamp(0, 1) * (f1 - f0)


class QuantileNormal(nn.Module):
    """Per feature, raw units -> a standard normal through the training split's quantiles: what
    scikit-learn's `QuantileTransformer(output_distribution="normal")` does, inside the net, so the
    logged model takes raw units. A heavy tail (a sensor at 500 where its std is 33) ends at
    +-5.2 instead of hundreds of standard deviations, so one extreme feature of a normal row no
    longer outweighs an anomaly's many moderate ones. `quantiles`: (levels, features), levels
    evenly spaced from the minimum to the maximum (`Task.quantiles`)."""

    BOUND = 1e-7  # scikit-learn's BOUNDS_THRESHOLD: z in about [-5.2, 5.2]

    def __init__(self, quantiles: list[list[float]]):
        super().__init__()
        q = torch.tensor(quantiles, dtype=torch.float32).T.contiguous()  # (features, levels)
        self.register_buffer("q", q)
        self.register_buffer("refs", torch.linspace(0, 1, q.shape[1]).expand_as(q).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float64: in float32, 1 - 1e-7 rounds, and the tails' z with it
        xt, q, refs = x.reshape(-1, self.q.shape[0]).T.double(), self.q.double(), self.refs.double()
        # as scikit-learn: the mean of interpolating upwards and downwards, so a run of tied
        # quantiles (integer sensors) maps to the middle of its run, not to one end
        up = _interp(xt, q, refs)
        down = 1 - _interp(-xt, -q.flip(1), refs)
        p = 0.5 * (up + down)
        # a value beyond a feature's training range goes to the end, even where the end is a run
        # of ties: out of range reads as extreme. (scikit-learn also sends a value *at* the
        # minimum there, and one at the maximum only in float64: its 1e-7 margin rounds away
        # in float32. Here the ends' ties go to their run's middle, as every other run's do.)
        p = torch.where(xt > q[:, -1:], 1.0, p)
        p = torch.where(xt < q[:, :1], 0.0, p).clamp(self.BOUND, 1 - self.BOUND)
        return torch.special.ndtri(p).T.reshape(x.shape).to(x.dtype)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        p = torch.special.ndtr(z.reshape(-1, self.q.shape[0]).T.double())
        return _interp(p, self.refs.double(), self.q.double()).T.reshape(z.shape).to(z.dtype)


def norm_act_drop(width: int, cfg: Any, *, conv: bool) -> list[nn.Module]:
    """The block tail both MLP and CNN use: optional batch norm, activation, optional dropout."""
    layers: list[nn.Module] = []
    if cfg.batch_norm:
        layers.append((nn.BatchNorm2d if conv else nn.BatchNorm1d)(width))
    layers.append(ACTIVATIONS[cfg.activation]())
    if cfg.dropout > 0:
        layers.append((nn.Dropout2d if conv else nn.Dropout)(cfg.dropout))
    return layers
