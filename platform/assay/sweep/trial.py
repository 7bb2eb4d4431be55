"""One Optuna trial inside a training run: what `train()` needs to know when a sweep runs it, and
the pruning callback that reports to the study.

Kept apart from `assay.sweep` (the driver) because a Ray Train worker imports it: under DDP the
callback runs on every rank, but only rank 0 talks to Optuna. Rank 0 reports the epoch's value,
asks the pruner, and broadcasts the answer, so every rank stops at the same epoch. That is the fix
for optuna-integration's `PyTorchLightningPruningCallback`, which under DDP reports from each rank
and leaves the other ranks waiting in a collective (optuna/optuna#6043).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from lightning.pytorch.callbacks import Callback

from assay.sweep.study import open_storage
from assay.training import RunOptions


@dataclass
class TrialContext:
    """What the sweep driver hands a trial: plain data, so it crosses to Ray workers."""

    study: str
    storage: str  # an Optuna storage URL the trial's process can reach
    trial_id: int
    number: int
    metric: str  # e.g. val/acc: reported to the pruner every epoch
    pruner: dict[str, Any]  # assay.sweep.PrunerConfig, dumped
    parent_run_id: str  # the sweep's MLflow run; the trial's run is its child
    out_dir: str  # the trial's own outputs (model/best.ckpt, run.json)
    params: dict[str, Any] = field(default_factory=dict)  # the sampled values, by key path
    tags: dict[str, str] = field(default_factory=dict)  # provenance the driver computed once
    started: float = 0.0  # time.time() when the trial's process took it up
    driver: tuple[str, int] | None = None  # (host, pid) of the sweep driver

    @property
    def run_name(self) -> str:
        return f"{self.study}-trial-{self.number}"


def build_pruner(cfg: dict[str, Any]):
    """An Optuna pruner from a dumped `PrunerConfig`."""
    name = cfg["name"]
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=cfg["min_resource"], reduction_factor=cfg["reduction_factor"]
        )
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=cfg["min_resource"], reduction_factor=cfg["reduction_factor"]
        )
    if name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=cfg["n_startup_trials"], n_warmup_steps=cfg["n_warmup_steps"]
        )
    if name == "threshold":
        return optuna.pruners.ThresholdPruner(lower=cfg.get("lower"), upper=cfg.get("upper"))
    return optuna.pruners.NopPruner()


class OptunaPruning(Callback):
    """Report `ctx.metric` to the trial after every validation; stop when the pruner says so.

    Rank 0 alone reports and decides; the decision is broadcast to all ranks. The epoch a trial
    was pruned at is stored on the trial (`pruned_at_epoch`), where the driver reads it whichever
    process trained. Also notes when the first training step starts (the platform's overhead).
    """

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.pruned_at: int | None = None
        self.first_step_at: float | None = None
        self._trial = None

    def _optuna_trial(self):
        if self._trial is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(
                study_name=self.ctx.study,
                storage=trial_storage(self.ctx.storage),
                pruner=build_pruner(self.ctx.pruner),
            )
            self._trial = optuna.trial.Trial(study, self.ctx.trial_id)
        return self._trial

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.is_global_zero:
            self._optuna_trial()  # before the first step: a storage error costs no training

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
            if trainer.is_global_zero and self.ctx.started:
                trial = self._optuna_trial()
                trial.set_user_attr("overhead_s", round(self.first_step_at - self.ctx.started, 3))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.ctx.metric)
            if value is not None:
                trial = self._optuna_trial()
                trial.report(float(value), epoch)
                prune = trial.should_prune()
                if prune:
                    trial.set_user_attr("pruned_at_epoch", epoch)
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = epoch
            trainer.should_stop = True


@functools.cache
def trial_storage(url: str):
    """The study's storage as a trial's process opens it, once per process: through
    `open_storage`, so that on SQLite a write waits out another process's (60 s) instead of
    failing after pysqlite's 5 s with "database is locked". A storage opened from the bare URL
    (`optuna.load_study(storage=url)`) had that 5 s limit, and under CI's load a trial's report
    or user attribute could fail the trial. No heartbeat here: the process that runs the trial
    (`worker.run_trial`) beats."""
    return open_storage(url)


def set_user_attr(ctx: TrialContext, key: str, value: Any) -> None:
    """Note something on the trial in the study's storage (from whichever process trains it)."""
    trial_storage(ctx.storage).set_trial_user_attr(ctx.trial_id, key, value)


def get_user_attr(ctx: TrialContext, key: str) -> Any:
    """What a process noted on the trial (`set_user_attr`), read back from the study's storage."""
    return trial_storage(ctx.storage).get_trial(ctx.trial_id).user_attrs.get(key)


def die_with_driver(driver: tuple[str, int] | None, every: float = 1.0) -> None:
    """A watchdog thread: if the sweep driver (host, pid) on this machine is gone (killed), end
    this worker's process at once: its trial's heartbeat stops, and `--resume` retries it.
    Otherwise an orphaned trial would train on and write to the study and the MLflow run after
    `--resume` has failed it. (On another node Ray ends a dead driver's tasks.)"""
    if not driver or driver[0] != socket.gethostname():
        return
    pid = int(driver[1])

    def watch() -> None:
        while True:
            time.sleep(every)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)  # noqa: SLF001  no clean-up: the driver that wanted it is gone
            except PermissionError:
                pass

    threading.Thread(target=watch, name="assay-driver-watch", daemon=True).start()


def run_options(ctx: TrialContext) -> RunOptions:
    """How `assay.training.train` runs this trial: its MLflow run a child of the sweep's, its
    W&B run grouped under the study (started after the fit: W&B's start-up stays off the trial's
    clock), reporting to Optuna every epoch and stopping when pruned, its outputs in the trial's
    own folder, its model logged only if it wins (`sweep.register_best`), its run id noted on the
    trial as soon as it exists (so a resumed sweep finds it even if the driver died)."""

    def outcome() -> dict[str, str]:
        pruned_at = get_user_attr(ctx, "pruned_at_epoch")  # noted by whichever process trained
        if pruned_at is None:
            return {"trial.state": "complete"}
        return {"trial.state": "pruned", "trial.pruned_at_epoch": str(pruned_at)}

    return RunOptions(
        run_name=ctx.run_name,
        out_dir=Path(ctx.out_dir),
        tags={
            "mlflow.parentRunId": ctx.parent_run_id,
            "optuna.study": ctx.study,
            "optuna.trial": str(ctx.number),
        },
        provenance=ctx.tags,  # computed once by the driver for all its trials
        callbacks=[OptunaPruning(ctx)],
        wandb_group=ctx.study,
        wandb_after_fit=True,
        log_model=False,
        progress_bar=False,  # the driver prints a line per trial
        on_run=lambda run_id: set_user_attr(ctx, "mlflow_run_id", run_id),
        outcome=outcome,
        # the trials share the sweep's key and run side by side; a dead one's run is the
        # sweep's to end (worker.StaleTrial), not the next trial's
        close_predecessors=False,
    )
