"""One builder under both launchers: a run's data, model, callbacks and Lightning Trainer are
made here and only here, for the in-process fit (`assay.training`), the refit and every Ray Train
worker (`assay.distributed`). What a caller adds (a sweep's pruning callback, its tags, its
folder) comes in as plain arguments: nothing here knows what a trial is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.utils.deterministic
from lightning.pytorch.callbacks import Callback, EarlyStopping

from assay import tracking, transfer
from assay.data import ArrayDataModule, datamodule
from assay.models import create_model, get_entry
from assay.paths import csv_bytes


@dataclass
class Fit:
    """What a finished fit hands back, in-process or on Ray."""

    best_path: Path  # the Lightning checkpoint of the best epoch (by the monitor)
    rows: list[dict[str, float]]  # one row of train/ and val/ metrics per epoch
    epochs: int
    ray: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)  # each epoch's wall time, val included


def build(cfg, root: Path, *, refit: bool = False) -> tuple[ArrayDataModule, pl.LightningModule]:
    """The run's data and a fresh model for it (`refit`: train + val as the training split).
    Seed first (`pl.seed_everything`): the model's initial weights come from it."""
    t = cfg.train
    dm = datamodule(
        t.dataset,
        root,
        batch_size=t.batch_size,
        seed=t.seed,
        refit=refit,
        labels_per_class=t.labels_per_class,
    )
    model = create_model(
        t.arch, task=dm.task, optim=t.optim(), settings=t.arch_config(), objective=t.objective
    )
    model.init_from = None
    if t.init_from is not None:  # the encoder of a logged model (checked: layers, vocabulary)
        source = transfer.load_source(t.init_from, tracking.tracking_uri(cfg.tracking, root))
        text = dm.meta["kind"] == "text"
        layers = transfer.load_encoder(
            source, model.net, get_entry(t.arch).family, dm.tokenizer_path if text else None
        )
        model.init_from = {
            "assay.init_from": t.init_from,
            "assay.init_from.run_id": source.run_id or "",
            "assay.init_from.layers": str(len(layers)),
        }
    return dm, model


class History(Callback):
    """Epoch-level metrics as plain rows, for the learning-curve plot and DVC's history.csv.
    Whatever the module logs per epoch under train/ and val/ is kept."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    @staticmethod
    def _scalars(trainer, prefix: str) -> dict[str, float]:
        m = trainer.callback_metrics
        return {k: float(v) for k, v in m.items() if k.startswith(prefix) and v.numel() == 1}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.rows.append({"epoch": trainer.current_epoch, **self._scalars(trainer, "val/")})

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # runs after validation: complete the epoch's row (a refit has no validation: start it)
        if not self.rows or self.rows[-1]["epoch"] != trainer.current_epoch:
            self.rows.append({"epoch": trainer.current_epoch})
        self.rows[-1].update(self._scalars(trainer, "train/"))

    # Saved in every Lightning checkpoint, so a run resumed on Ray keeps its earlier epochs.
    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state.get("rows", []))


def history_csv(rows: list[dict[str, float]]) -> bytes:
    """Epoch rows as CSV: epoch, then train/ columns, then val/ ones."""
    seen = dict.fromkeys(k for r in rows for k in r if k != "epoch")
    keys = sorted(seen, key=lambda k: (not k.startswith("train/"), k))
    return csv_bytes(rows, ["epoch", *keys])


class EpochClock(Callback):
    """Each epoch's wall time, training and validation together (Lightning validates inside
    the training epoch): what bench/overhead.py sets against a hand-written loop's epochs."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class RunStamp(Callback):
    """Writes the MLflow run's id into every checkpoint the Trainer saves (the best one, Ray's,
    the refit's), where `assay.artifacts.read_run_info` checks it against run.json."""

    def __init__(self, run_id: str, key: str) -> None:
        self.run_id, self.key = run_id, key

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["assay"] = {"mlflow_run_id": self.run_id, "key": self.key}


class MonitorCheck(Callback):
    """A `train.monitor` the model never logs fails after Lightning's two-batch sanity check,
    before the first training step, naming the metrics it could have used."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
        if trainer.sanity_checking and self.monitor not in logged:
            raise ValueError(
                f"train.monitor: {type(pl_module).__name__} logs no {self.monitor!r}; "
                f"it logs {', '.join(logged)} (or use 'auto')"
            )


def fit_callbacks(
    cfg, extra: list[Callback], monitor: str, mode: str, run_id: str
) -> tuple[list[Callback], History]:
    """The callbacks every fit has, in-process or on a Ray worker: `extra` (the objective's own,
    then the caller's), the history, early stopping on the monitor, the monitor's check, and the
    stamp that names the MLflow run in every checkpoint (see `assay.artifacts`)."""
    t = cfg.train
    history = History()
    out: list[Callback] = [*extra, history, RunStamp(run_id, t.key)]
    if t.early_stopping_patience > 0:
        out.append(EarlyStopping(monitor, mode=mode, patience=t.early_stopping_patience))
    if t.monitor != "auto":
        out.append(MonitorCheck(monitor))
    if t.freeze == "encoder":  # a linear probe (until unfreeze_epoch): Lightning's fine-tuning
        out.append(transfer.FreezeEncoder(t.unfreeze_epoch))
    return out, history


def trainer(cfg, model, callbacks: list[Callback], **where: Any) -> pl.Trainer:
    """The Lightning Trainer of a run: what its config decides (epochs, precision, clipping,
    determinism), the same in-process, for the refit and on Ray workers; `where` is what the
    launcher decides (accelerator, devices, strategy, logger, ... and overrides)."""
    t = cfg.train
    if t.deterministic:
        # Deterministic algorithms, without also filling every new tensor with NaN first: that
        # guard (on by default with them) catches ops that read memory they never wrote, and
        # changes no result of an op that does not; it cost ~5 % of a CNN training step here
        # (43.9 -> 41.6 ms, MNIST, channels-last, medians of 5 interleaved runs).
        torch.utils.deterministic.fill_uninitialized_memory = False
    # Lightning clips for automatic optimisation; a manual loop (the GAN) clips itself.
    clip = t.grad_clip if t.grad_clip > 0 and model.automatic_optimization else None
    settings = {
        "gradient_clip_val": clip,
        "max_epochs": t.max_epochs,
        "precision": t.precision,
        "deterministic": t.deterministic,
        "log_every_n_steps": 50,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**settings, **where}, callbacks=callbacks)


def best_row(rows: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float]:
    """The epoch ModelCheckpoint kept (the best `monitor`)."""
    worst = np.inf if mode == "min" else -np.inf
    pick = min if mode == "min" else max
    return pick(rows, key=lambda r: r.get(monitor, worst))


def best_scores(rows: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float]:
    """The validation metrics of the epoch ModelCheckpoint kept."""
    return {k: float(v) for k, v in best_row(rows, monitor, mode).items() if k.startswith("val/")}


def best_epoch(rows: list[dict[str, float]], monitor: str, mode: str) -> int:
    return int(best_row(rows, monitor, mode)["epoch"])
