"""Training: `train(cfg) -> TrainResult` (scoring on the test split is `assay.evaluation`).

Outputs of a run, under its key (`train.key`: its params.yaml run or experiment name, else
`<dataset>-<arch>`); all DVC outputs, each written whole or not at all, each naming the MLflow run
that made it (see `assay.artifacts`):
  outputs/<key>/model/        best.ckpt, run.json (MLflow and W&B ids)      <- train
                              (+ refit.ckpt, the run's model, with train.refit)
  outputs/<key>/history.csv, learning_curve.png                              <- train
  outputs/<key>/metrics.json, eval/ (the objective's plots and tables)       <- evaluate

What differs between families (the loss, the metrics, what is plotted) follows the model's
*objective* (classification, forecast, reconstruction, anomaly, generation, rating), never the
family's name: each objective is one file of `assay.objectives`.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from assay import plots, tracking
from assay.artifacts import commands, read_run_info, stamp_png
from assay.config import AssayConfig
from assay.data import ArrayDataModule, datamodule
from assay.distributed import Fit
from assay.models import create_model, get_entry
from assay.paths import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    csv_bytes,
    find_root,
    output_dir,
)
from assay.trial import TrialContext


@dataclass
class TrainResult:
    key: str
    run_id: str
    wandb_id: str | None
    checkpoint: Path
    metrics: dict[str, float]  # the best epoch's validation metrics
    seconds: float
    epochs: int = 0
    state: str | None = None  # a sweep trial's: complete or pruned


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


def _threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def preflight(cfg: AssayConfig, root: Path) -> tuple[ArrayDataModule, pl.LightningModule, list]:
    """What a run checks before it opens one, so a failure costs no run: the prepared data
    (meta.json and every split readable), the model built for it, a refit's refusal, the
    family's callbacks (the GAN's judge must be registered), local GPUs. `train()` calls it, and
    a sweep's driver once on its base config before any trial. Returns (data, model, callbacks)."""
    t = cfg.train
    dm = datamodule(t.dataset, root, batch_size=t.batch_size, seed=t.seed)
    dm.verify()  # a damaged file is named, with how to rebuild it
    model = create_model(t.arch, task=dm.task, optim=t.optim(), **t.arch_config())
    if t.refit:
        check_refit(model, t)
    callbacks = model.objective.callbacks(model, cfg, root)  # the GAN's judge: a missing one fails
    if t.workers > 0:
        from assay import distributed

        distributed.check_local_gpus(cfg)  # GPUs this machine lacks
    return dm, model, callbacks


def train(
    cfg: AssayConfig, root: Path | None = None, *, trial: TrialContext | None = None
) -> TrainResult:
    """Train `cfg.train.arch` on `cfg.train.dataset`, tracked in MLflow and W&B.

    `trial`: a sweep's trial (see `assay.sweep`). Its MLflow run is a child of the sweep's run,
    its W&B run is grouped under the study, it reports to Optuna every epoch and stops when
    pruned, and its outputs go to the trial's own folder. Its model is logged only if it wins."""
    root = (root or find_root()).resolve()
    t = cfg.train
    started = time.perf_counter()
    pl.seed_everything(t.seed, workers=True, verbose=False)
    _threads(t.num_threads)
    dm, model, extra_callbacks = preflight(cfg, root)  # after the seed: it builds the model
    entry = get_entry(t.arch)
    pruning = None
    if trial is not None:
        from assay.trial import OptunaPruning

        pruning = OptunaPruning(trial)
        extra_callbacks.append(pruning)
    run_name = trial.run_name if trial else f"{t.key}-{time.strftime('%Y%m%d-%H%M%S')}"
    digest = cfg.digest()
    tags = {
        "dataset": t.dataset,
        "arch": t.arch,
        "family": entry.family,
        "objective": model.objective.name,
        "assay.key": t.key,
        "params.digest": digest,
        # a sweep computes these once for all its trials
        **(trial.tags if trial else tracking.provenance(root, t.dataset)),
    }
    if trial is not None:
        tags.update(
            {
                "mlflow.parentRunId": trial.parent_run_id,
                "optuna.study": trial.study,
                "optuna.trial": str(trial.number),
            }
        )
    params = {
        "train": t.model_dump(exclude={"models"}),
        "model": model.config.model_dump(),
        "data": {
            "dataset": t.dataset,
            "kind": dm.meta["kind"],
            **{f"n_{k}": v for k, v in dm.meta["counts"].items()},
        },
        "prepare": cfg.prepare.model_dump(),
        "params_digest": digest,
    }
    out = Path(trial.out_dir) if trial else output_dir(t.key, root)
    monitor, mode = t.monitor_for(model.monitor)
    remote = t.workers > 0
    with (
        tracking.TrackedRun(
            cfg,
            root,
            run_name,
            tags,
            params,
            remote=remote,
            # a trial's W&B run starts after its fit: W&B's start-up stays off the trial's clock
            wandb_after_fit=trial is not None,
            wandb_group=trial.study if trial else None,
        ) as run,
        atomic_dir(out / "model") as model_dir,
        tempfile.TemporaryDirectory() as scratch,
    ):
        run.hold_scratch(model_dir)  # for whoever cleans up should this process be killed
        if trial is not None:  # so a resumed sweep finds this run even if its driver died
            from assay.trial import set_user_attr

            set_user_attr(trial, "mlflow_run_id", run.run_id)
        if remote:
            from assay import distributed

            fit = distributed.fit(cfg, root, run, monitor, mode, model_dir, trial=trial)
        else:
            fit = _fit_local(
                model, dm, cfg, run, monitor, mode, model_dir, extra_callbacks, bar=not trial
            )
        state = None
        if trial is not None:
            pruned_at = pruning.pruned_at if not remote else fit.pruned_at
            state = "pruned" if pruned_at is not None else "complete"
            run.client.set_tag(run.run_id, "trial.state", state)
            if pruned_at is not None:
                run.client.set_tag(run.run_id, "trial.pruned_at_epoch", str(pruned_at))
        if remote or trial is not None:
            run.attach_wandb(fit.rows, state=state)
        best = _best_scores(fit.rows, monitor, mode)
        run.log_metrics({f"best_{k}": v for k, v in best.items()})
        # The best weights, not the last: log them as the MLflow model (a trial's only if it
        # wins the sweep: `log_trained_model`). With train.refit, the refit's weights instead.
        best_model = type(model).load_from_checkpoint(fit.best_path).cpu().eval()
        checkpoint, refit_epochs = fit.best_path, None
        if t.refit:
            refit_epochs = _best_epoch(fit.rows, monitor, mode) + 1
            best_model, dm, checkpoint = _refit(cfg, root, refit_epochs, run, model_dir)
        model_uri = None if trial else _log_model(run.run_id, best_model, dm, Path(scratch))
        run.log_artifact(fit.best_path, "checkpoints")
        if t.refit:
            run.log_artifact(checkpoint, "checkpoints")
        curve = plots.learning_curve(fit.rows, Path(scratch) / "learning_curve.png", run_name)
        stamp_png(curve, run.run_id)
        run.log_image("learning_curve", curve)
        curve_png = curve.read_bytes()
        info = {
            "key": t.key,
            "arch": t.arch,
            "dataset": t.dataset,
            "objective": model.objective.name,
            "primary_metric": list(model.primary_metric),
            "monitor": [monitor, mode],
            "run_name": run_name,
            "mlflow_run_id": run.run_id,
            "mlflow_experiment_id": run.experiment_id,
            "mlflow_tracking_uri": run.uri,
            "model_uri": model_uri,
            "wandb_run_id": run.wandb_id,
            "best_val": best,
            "epochs": fit.epochs,
            "checkpoint": checkpoint.name,  # the run's model, in this folder
            **({"refit_epochs": refit_epochs} if refit_epochs else {}),
            **({"ray": fit.ray} if fit.ray else {}),
            **({"trial": {"number": trial.number, "state": state}} if trial else {}),
        }
        atomic_write_json(model_dir / "run.json", info)
    # Only once the run has succeeded: a failure above leaves none of the stage's outputs behind.
    atomic_write_bytes(out / "history.csv", history_csv(fit.rows))
    atomic_write_bytes(out / "learning_curve.png", curve_png)
    return TrainResult(
        t.key,
        run.run_id,
        run.wandb_id,
        out / "model" / checkpoint.name,
        best,
        time.perf_counter() - started,
        fit.epochs,
        state,
    )


def trainer_callbacks(
    cfg: AssayConfig, family: list[Callback], monitor: str, mode: str, run_id: str
) -> tuple[list[Callback], History]:
    """The callbacks every fit has, in-process or on a Ray worker: the family's own, the
    history, early stopping on the monitor, the monitor's check, and the stamp that names the
    MLflow run in every checkpoint (see `assay.artifacts`)."""
    t = cfg.train
    history = History()
    callbacks: list[Callback] = [*family, history, RunStamp(run_id, t.key)]
    if t.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor, mode=mode, patience=t.early_stopping_patience))
    if t.monitor != "auto":
        callbacks.append(MonitorCheck(monitor))
    return callbacks, history


def trainer_settings(t, model) -> dict:
    """The Trainer arguments a run's config decides, the same in-process and on Ray workers."""
    # Lightning clips for automatic optimisation; a manual loop (the GAN) clips itself.
    clip = t.grad_clip if t.grad_clip > 0 and model.automatic_optimization else None
    return {
        "gradient_clip_val": clip,
        "max_epochs": t.max_epochs,
        "precision": t.precision,
        "deterministic": t.deterministic,
        "log_every_n_steps": 50,
        "enable_model_summary": False,
    }


def _fit_local(model, dm, cfg, run, monitor, mode, model_dir, family, bar=True) -> Fit:
    """Lightning in this process; the best epoch is kept as `model_dir/best.ckpt`."""
    t = cfg.train
    callbacks, history = trainer_callbacks(cfg, family, monitor, mode, run.run_id)
    checkpoint = ModelCheckpoint(
        dirpath=model_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    callbacks.append(checkpoint)
    trainer = pl.Trainer(
        **trainer_settings(t, model),
        accelerator=t.accelerator,
        devices=1,
        logger=run.loggers,
        callbacks=callbacks,
        default_root_dir=model_dir,
        enable_progress_bar=bar,  # a sweep's trials: the driver prints a line per trial
    )
    trainer.fit(model, datamodule=dm)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    return Fit(Path(checkpoint.best_model_path), history.rows, trainer.current_epoch)


def _best_row(rows: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float]:
    """The epoch ModelCheckpoint kept (the best `monitor`)."""
    worst = np.inf if mode == "min" else -np.inf
    pick = min if mode == "min" else max
    return pick(rows, key=lambda r: r.get(monitor, worst))


def _best_scores(rows: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float]:
    """The validation metrics of the epoch ModelCheckpoint kept."""
    return {k: float(v) for k, v in _best_row(rows, monitor, mode).items() if k.startswith("val/")}


def _best_epoch(rows: list[dict[str, float]], monitor: str, mode: str) -> int:
    return int(_best_row(rows, monitor, mode)["epoch"])


def check_refit(model, t) -> None:
    """Refuse `train.refit` where it has no meaning, before any run starts. Checked for the run
    being trained, not when the config loads: params.yaml's other runs may refit, and a
    `--workers` for this one must not make them invalid."""
    from assay.config import ConfigError

    if model.objective.refit is not None:
        raise ConfigError([f"train.refit: true: {model.objective.refit}; set it false"])
    if t.workers > 0:
        raise ConfigError(
            [
                f"train.refit: true with train.workers {t.workers}: the refit runs in this "
                "process, not on Ray Train; set train.workers=0 or train.refit=false"
            ]
        )


def _refit(cfg: AssayConfig, root: Path, epochs: int, run, model_dir: Path):
    """Train a fresh model (same seed) on train + val for `epochs` epochs, the fit's best count,
    in this process; its final weights become `model_dir/refit.ckpt`, the run's model. Its
    per-epoch training metrics go to MLflow as refit/<name> (no validation: val trains it)."""
    t = cfg.train
    pl.seed_everything(t.seed, workers=True, verbose=False)
    dm = datamodule(t.dataset, root, batch_size=t.batch_size, seed=t.seed, refit=True)
    model = create_model(t.arch, task=dm.task, optim=t.optim(), **t.arch_config())
    history = History()
    trainer = pl.Trainer(
        **{**trainer_settings(t, model), "max_epochs": epochs},
        accelerator=t.accelerator,
        devices=1,
        logger=False,
        callbacks=[history, RunStamp(run.run_id, t.key)],
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=model_dir,
    )
    rank_zero_info(f"refit: a fresh model, {epochs} epoch(s) on train + val")
    trainer.fit(model, datamodule=dm)
    if trainer.interrupted:
        raise KeyboardInterrupt("the refit was interrupted")
    path = model_dir / "refit.ckpt"
    trainer.save_checkpoint(path)
    for row in history.rows:
        metrics = {f"refit/{k.removeprefix('train/')}": v for k, v in row.items() if "/" in k}
        run.log_metrics(metrics, step=int(row["epoch"]))
    run.client.set_tag(run.run_id, "refit.epochs", str(epochs))
    return model.cpu().eval(), dm, path


def model_card(model, dm: ArrayDataModule) -> dict:
    """What the logged model needs besides the network: the objective, how to read its output,
    and its input contract (`input`: what raw input it takes, see `assay.contract`)."""
    keep = (
        "classes",
        "features",
        "target",
        "units",
        "horizon",
        "window",
        "max_len",
        "user_ids",
        "item_ids",
    )
    from assay import contract

    card = {
        "objective": model.objective.name,
        "kind": dm.meta["kind"],
        "dataset": dm.meta["dataset"],
        "task": model.task.model_dump(mode="json"),
        **{k: dm.meta[k] for k in keep if k in dm.meta},
        **model.card(),
    }
    # the raw input the logged model takes and how it becomes the net's (assay.contract)
    return {**card, "input": contract.describe(card, dm.meta)}


def _log_model(run_id: str, model, dm: ArrayDataModule, scratch: Path) -> str:
    """Log the model as an MLflow pyfunc (`assay.contract.AssayModel`): the inference network
    (pickled whole), `assay.json` with its input contract, and the tokenizer for text. Its
    predict takes raw input (pixels in the data set's own range, texts, series in their units,
    MovieLens ids) and refuses what is out of contract, so `assay predict`, MLflow's loader and
    `mlflow models serve` answer alike."""
    import json

    import mlflow
    from mlflow.models import ModelSignature, infer_signature

    from assay import contract

    net = model.inference_model().cpu().eval()
    card = model_card(model, dm)
    (scratch / "assay.json").write_text(json.dumps(card, indent=2))
    torch.save(net, scratch / "net.pt")
    artifacts = {"net": str(scratch / "net.pt"), "card": str(scratch / "assay.json")}
    tokenizer = None
    if dm.meta["kind"] == "text":
        from tokenizers import Tokenizer

        artifacts["tokenizer"] = str(dm.tokenizer_path)
        tokenizer = Tokenizer.from_file(str(dm.tokenizer_path))
    example = model.objective.example(model, dm)
    if example is None:
        example = contract.raw_example(card, dm)
    out = contract.apply(card, net, example, tokenizer)
    # outputs only: MLflow's input enforcement would refuse valid raw input (see assay.contract)
    signature = ModelSignature(inputs=None, outputs=infer_signature(None, out).outputs)
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    requirements += ["numpy", "lightning"] + (["tokenizers"] if tokenizer else [])
    # explicit requirements spare 6-7 s of inference
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=contract.AssayModel(),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            metadata={"assay_input": card["input"]},
        )
    return logged.model_uri  # models:/<model id>: what the registry registers


def log_trained_model(cfg: AssayConfig, root: Path, out: Path) -> str:
    """Log the best checkpoint in `out` as the MLflow model of its run (a sweep does this for its
    best trial only); records the model URI in its run.json. Returns the URI."""
    info = read_run_info(out, cfg.train.key, commands(cfg, root))
    if info.get("model_uri"):
        return info["model_uri"]
    t = cfg.train
    model = get_entry(info["arch"]).module_cls.load_from_checkpoint(
        out / "model" / info.get("checkpoint", "best.ckpt"), map_location="cpu"
    )
    dm = datamodule(t.dataset, root, batch_size=t.batch_size, seed=t.seed)
    import mlflow

    mlflow.set_tracking_uri(info["mlflow_tracking_uri"])
    with tempfile.TemporaryDirectory() as scratch:
        uri = _log_model(info["mlflow_run_id"], model.cpu().eval(), dm, Path(scratch))
    atomic_write_json(out / "model" / "run.json", {**info, "model_uri": uri})
    return uri
