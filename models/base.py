"""What every architecture shares: the data task it serves, the optimiser config, the classifier.

A model file keeps the anatomy of STYLE.md: a pydantic `Config`, the plain `nn.Module`, the
LightningModule that wraps it (subclassing `ImageClassifier` here), then its registered presets.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

Activation = Literal["relu", "sigmoid", "tanh", "gelu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


class StrictModel(BaseModel):
    """Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Task(StrictModel):
    """What the data gives a model: input shape of one example and the classes."""

    kind: Literal["classification"] = "classification"
    in_shape: tuple[int, ...]  # one example, e.g. (1, 28, 28)
    num_classes: int = Field(ge=2)
    class_names: list[str] = []


class OptimConfig(StrictModel):
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop only")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 (decoupled for adamw)")
    l1: float = Field(0.0, ge=0, le=1, description="L1 penalty on weights, added to the loss")
    scheduler: Literal["none", "cosine", "step", "onecycle"] = "none"
    step_size: int = Field(5, ge=1, description="epochs between decays, scheduler=step")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor, scheduler=step")


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


class ImageClassifier(pl.LightningModule):
    """Softmax classifier over images (B, C, H, W); subclasses supply `Config` and `build_net`."""

    Config: ClassVar[type[StrictModel]]
    # The metric the registry's champion gate compares, and which way is better.
    primary_metric: ClassVar[tuple[str, Literal["max", "min"]]] = ("test/acc", "max")

    def __init__(self, config: Any, task: Any, optim: Any = None):
        super().__init__()
        # Checkpoints reload through these plain dicts; the trackers get flattened params instead.
        self.config = self.Config.model_validate(config)
        self.task = Task.model_validate(task)
        self.optim = OptimConfig.model_validate(optim or {})
        self.save_hyperparameters(
            {
                "config": self.config.model_dump(),
                "task": self.task.model_dump(),
                "optim": self.optim.model_dump(),
            },
            logger=False,
        )
        self.net = self.build_net()
        k = self.task.num_classes
        self.acc = nn.ModuleDict({s: MulticlassAccuracy(k) for s in ("train_", "val_", "test_")})
        self.example_input_array = torch.zeros(2, *self.task.in_shape)

    def build_net(self) -> nn.Module:  # (B, *in_shape) -> logits (B, K)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _l1(self) -> torch.Tensor:
        # Weights only: biases and norm scales are not what an L1 penalty is meant to sparsify.
        return sum(p.abs().sum() for n, p in self.named_parameters() if p.ndim > 1)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.acc[stage + "_"](logits, y)
        on_step = False
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", self.acc[stage + "_"], on_epoch=True, prog_bar=stage != "train")
        if stage == "train" and self.optim.l1 > 0:
            loss = loss + self.optim.l1 * self._l1()
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self(x), dim=-1)

    def configure_optimizers(self):
        opt = make_optimizer(self.parameters(), self.optim)
        cfg = self.optim
        if cfg.scheduler == "none":
            return opt
        if cfg.scheduler == "onecycle":
            total = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if cfg.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def inference_model(self) -> nn.Module:
        """The network with its softmax, as logged to MLflow: (B, *in_shape) -> probs (B, K)."""
        return SoftmaxHead(self.net).eval()


class SoftmaxHead(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def norm_act_drop(width: int, cfg: Any, *, conv: bool) -> list[nn.Module]:
    """The block tail both MLP and CNN use: optional batch norm, activation, optional dropout."""
    layers: list[nn.Module] = []
    if cfg.batch_norm:
        layers.append((nn.BatchNorm2d if conv else nn.BatchNorm1d)(width))
    layers.append(ACTIVATIONS[cfg.activation]())
    if cfg.dropout > 0:
        layers.append((nn.Dropout2d if conv else nn.Dropout)(cfg.dropout))
    return layers
