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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from assay import distributed, engine, plots, tracking
from assay.artifacts import commands, read_run_info, stamp_png
from assay.config import AssayConfig, ConfigError
from assay.data import ArrayDataModule, datamodule
from assay.data.common import check_few_shot
from assay.engine import Fit, History, RunStamp, history_csv
from assay.models import get_entry
from assay.paths import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    find_root,
    output_dir,
)
from assay.timing import Phases
from assay.tracking import contract


@dataclass
class TrainResult:
    key: str
    run_id: str
    wandb_id: str | None
    checkpoint: Path
    metrics: dict[str, float]  # the best epoch's validation metrics
    seconds: float
    epochs: int = 0
    outcome: dict[str, str] = field(default_factory=dict)  # RunOptions.outcome's tags


@dataclass
class RunOptions:
    """What a caller adds to a run (a sweep does, for each trial); the engine knows none of it.

    The defaults are `assay train`'s: a timestamped run name, outputs/<key>/, a progress bar, W&B
    live during the fit, the best weights logged as the run's MLflow model."""

    run_name: str | None = None
    out_dir: Path | None = None
    tags: dict[str, str] = field(default_factory=dict)  # more MLflow tags (a parent run, ...)
    provenance: dict[str, str] | None = None  # git commit and data hash, when known already
    callbacks: list[Callback] = field(default_factory=list)  # reach Ray workers: picklable
    wandb_group: str | None = None
    wandb_after_fit: bool = False  # start W&B after the fit (its start-up off the fit's clock)
    log_model: bool = True
    progress_bar: bool = True
    on_run: Callable[[str], None] | None = None  # told the MLflow run id once it exists
    outcome: Callable[[], dict[str, str]] | None = None  # after the fit: tags saying how it went
    close_predecessors: bool = True  # end dead earlier runs of the same key (assay.orphans)


def preflight(cfg: AssayConfig, root: Path) -> tuple[ArrayDataModule, pl.LightningModule, list]:
    """What a run checks before it opens one, so a failure costs no run: the prepared data
    (meta.json and every split readable), the model built for it, a refit's refusal, the
    family's callbacks (the GAN's judge must be registered), local GPUs. `train()` calls it, and
    a sweep's driver once on its base config before any trial. Returns (data, model, callbacks)."""
    t = cfg.train
    dm, model = engine.build(cfg, root)
    if t.labels_per_class is not None:
        check_few_shot(model.objective.name, t)
    dm.verify()  # a damaged file is named, with how to rebuild it (and a K no class can give)
    if t.refit:
        check_refit(model, t)
    callbacks = model.objective.callbacks(model, cfg, root)  # the GAN's judge: a missing one fails
    if t.workers > 0:
        distributed.check_local_gpus(cfg)  # GPUs this machine lacks
    return dm, model, callbacks


def train(
    cfg: AssayConfig, root: Path | None = None, options: RunOptions | None = None
) -> TrainResult:
    """Train `cfg.train.arch` on `cfg.train.dataset`, tracked in MLflow and W&B: in this process,
    or on Ray Train workers with `train.workers > 0`; then, with `train.refit`, the refit; then
    the run's model, learning curve and run.json. `options`: what a caller adds (RunOptions)."""
    root, opts, t = (root or find_root()).resolve(), options or RunOptions(), cfg.train
    started, clock = time.perf_counter(), Phases()
    with clock("data and model"):
        pl.seed_everything(t.seed, workers=True, verbose=False)
        if t.num_threads > 0:
            torch.set_num_threads(t.num_threads)
        dm, model, extra = preflight(cfg, root)  # after the seed: it builds the model
    monitor, mode = t.monitor_for(model.monitor)
    run_name = opts.run_name or f"{t.key}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(opts.out_dir) if opts.out_dir else output_dir(t.key, root)
    with clock("provenance"):  # git, the data's hash in dvc.lock, params
        tracked = tracking.TrackedRun(
            cfg,
            root,
            run_name,
            _tags(cfg, root, model, opts),
            _params(cfg, model, dm),
            remote=t.workers > 0,
            wandb_after_fit=opts.wandb_after_fit,
            wandb_group=opts.wandb_group,
            close_predecessors=opts.close_predecessors,
        )
    opening = time.perf_counter()
    with (
        tracked as run,
        atomic_dir(out / "model") as model_dir,
        tempfile.TemporaryDirectory() as scratch,
    ):
        run.hold_scratch(model_dir)  # for whoever cleans up should this process be killed
        clock.add("tracking start", opening)
        if opts.on_run:
            opts.on_run(run.run_id)
        with clock("fit"):
            fit = _launch(cfg, root, run, (model, dm, extra), (monitor, mode), model_dir, opts)
        clock.epochs = fit.seconds
        with clock("tracking after the fit"):
            outcome = opts.outcome() if opts.outcome else {}
            for k, v in outcome.items():
                run.client.set_tag(run.run_id, k, v)
            if t.workers > 0 or opts.wandb_after_fit:
                run.attach_wandb(fit.rows, outcome)
            best = engine.best_scores(fit.rows, monitor, mode)
            run.log_metrics({f"best_{k}": v for k, v in best.items()})
            # which metric chose that epoch, beside its values (best_val/acc is val/acc at the
            # epoch the monitor chose, and may be below the last epoch's)
            chosen = engine.best_epoch(fit.rows, monitor, mode)
            run.client.set_tag(run.run_id, "best_val.chosen_by", f"{monitor} ({mode})")
            run.client.set_tag(run.run_id, "best_val.epoch", str(chosen))
        refit_epochs = chosen + 1 if t.refit else None
        with clock("refit" if t.refit else "best checkpoint"):
            chosen, dm, checkpoint = _the_runs_model(
                cfg, root, model, dm, fit, run, model_dir, refit_epochs
            )
        # the run's model in MLflow (a sweep logs only its best trial's: `log_trained_model`)
        model_uri = None
        if opts.log_model:
            with clock("model logging"):
                model_uri = _log_model(run.uri, run.run_id, chosen, dm, Path(scratch))
        with clock("learning curve"):
            curve = plots.learning_curve(fit.rows, Path(scratch) / "learning_curve.png", run_name)
            stamp_png(curve, run.run_id)
            run.log_image("learning_curve", curve)
            curve_png = curve.read_bytes()
        info = _run_json(cfg, model, (monitor, mode), run, model_uri, fit, checkpoint)
        info.update(
            best_val=best,
            **({"refit_epochs": refit_epochs} if refit_epochs else {}),
            **({"outcome": outcome} if outcome else {}),
            timings=clock.as_dict(),  # where the seconds went (bench/overhead.py reads them)
        )
        atomic_write_json(model_dir / "run.json", info)
    # Only once the run has succeeded: a failure above leaves none of the stage's outputs behind.
    atomic_write_bytes(out / "history.csv", history_csv(fit.rows))
    atomic_write_bytes(out / "learning_curve.png", curve_png)
    seconds = time.perf_counter() - started
    path = out / "model" / checkpoint.name
    return TrainResult(t.key, run.run_id, run.wandb_id, path, best, seconds, fit.epochs, outcome)


def _launch(cfg, root: Path, run, built, monitored, model_dir: Path, opts: RunOptions):
    """The fit, on Ray Train workers (they build their own model, data and objective callbacks;
    the caller's callbacks go along) or in this process. `built`: (model, datamodule, objective
    callbacks); `monitored`: (metric, mode)."""
    model, dm, extra = built
    monitor, mode = monitored
    if cfg.train.workers > 0:
        bar = opts.progress_bar
        return distributed.fit(cfg, root, run, monitor, mode, model_dir, opts.callbacks, bar)
    callbacks = [*extra, *opts.callbacks]
    return _fit_local(model, dm, cfg, run, monitor, mode, model_dir, callbacks, opts)


def _run_json(cfg: AssayConfig, model, monitored, run, model_uri, fit, checkpoint) -> dict:
    """What run.json says of a run: its key and objective, where it is tracked, its model."""
    t = cfg.train
    return {
        "key": t.key,
        "arch": t.arch,
        "dataset": t.dataset,
        "objective": model.objective.name,
        "primary_metric": list(model.primary_metric),
        "monitor": list(monitored),
        "run_name": run.run_name,
        "mlflow_run_id": run.run_id,
        "mlflow_experiment_id": run.experiment_id,
        "mlflow_tracking_uri": run.uri,
        "model_uri": model_uri,
        "wandb_run_id": run.wandb_id,
        "epochs": fit.epochs,
        "checkpoint": checkpoint.name,  # the run's model, in this folder
        **({"ray": fit.ray} if fit.ray else {}),
    }


def _tags(cfg: AssayConfig, root: Path, model, opts: RunOptions) -> dict[str, str]:
    t = cfg.train
    return {
        "dataset": t.dataset,
        "arch": t.arch,
        "family": get_entry(t.arch).family,
        "objective": model.objective.name,
        "assay.key": t.key,
        "params.digest": cfg.digest(),
        **(model.init_from or {}),  # the parent model a transfer started from (lineage)
        **(opts.provenance or tracking.provenance(root, t.dataset)),
        **opts.tags,
    }


def _params(cfg: AssayConfig, model, dm: ArrayDataModule) -> dict:
    t = cfg.train
    return {
        "train": t.model_dump(exclude={"models"}),
        "model": model.config.model_dump(),
        "data": {
            "dataset": t.dataset,
            "kind": dm.meta["kind"],
            **{f"n_{k}": v for k, v in dm.meta["counts"].items()},
        },
        "prepare": cfg.prepare.model_dump(),
        "params_digest": cfg.digest(),
    }


def _fit_local(model, dm, cfg, run, monitor, mode, model_dir, extra, opts: RunOptions) -> Fit:
    """Lightning in this process; the best epoch is kept as `model_dir/best.ckpt`."""
    t = cfg.train
    callbacks, history = engine.fit_callbacks(cfg, extra, monitor, mode, run.run_id)
    clock = engine.EpochClock()
    checkpoint = ModelCheckpoint(
        dirpath=model_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        auto_insert_metric_name=False,
    )
    trainer = engine.trainer(
        cfg,
        model,
        [*callbacks, checkpoint, clock],
        accelerator=t.accelerator,
        devices=1,
        logger=run.loggers,
        default_root_dir=model_dir,
        enable_progress_bar=opts.progress_bar,  # a sweep's trials: a line per trial instead
    )
    trainer.fit(model, datamodule=dm)
    if trainer.interrupted:
        raise KeyboardInterrupt("training was interrupted")
    best = Path(checkpoint.best_model_path)
    return Fit(best, history.rows, trainer.current_epoch, seconds=clock.seconds)


def _the_runs_model(cfg, root: Path, model, dm, fit: Fit, run, model_dir: Path, epochs):
    """The best epoch's weights, not the last; with `train.refit` (`epochs`: the fit's best
    count), the refit's, a step after the fit. Returns (model, its data, its checkpoint); both
    checkpoints go to MLflow."""
    run.log_artifact(fit.best_path, "checkpoints")
    if not cfg.train.refit:  # the best checkpoint is loaded only when it is the run's model
        return type(model).load_from_checkpoint(fit.best_path).cpu().eval(), dm, fit.best_path
    refit, refit_dm, path = _refit(cfg, root, epochs, run, model_dir)
    run.log_artifact(path, "checkpoints")
    return refit, refit_dm, path


def check_refit(model, t) -> None:
    """Refuse `train.refit` where it has no meaning, before any run starts. Checked for the run
    being trained, not when the config loads: params.yaml's other runs may refit, and a
    `--workers` for this one must not make them invalid."""
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
    dm, model = engine.build(cfg, root, refit=True)
    history = History()
    trainer = engine.trainer(
        cfg,
        model,
        [history, RunStamp(run.run_id, t.key)],
        max_epochs=epochs,
        accelerator=t.accelerator,
        devices=1,
        logger=False,
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
    and its input contract (`input`: what raw input it takes, see `assay.tracking.contract`)."""
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
    card = {
        "objective": model.objective.name,
        "output": model.objective.output(model.task),  # what the logged model does after the net
        "kind": dm.meta["kind"],
        "dataset": dm.meta["dataset"],
        "task": model.task.model_dump(mode="json"),
        **{k: dm.meta[k] for k in keep if k in dm.meta},
        **model.card(),
    }
    # the raw input the logged model takes and how it becomes the net's (assay.tracking.contract)
    return {**card, "input": contract.describe(card, dm.meta)}


def _log_model(uri: str, run_id: str, model, dm: ArrayDataModule, scratch: Path) -> str:
    """Log the model's inference network with its card (`tracking.log_model`): raw input in,
    the objective's answer out, the same through `assay predict`, MLflow and its server."""
    card = model_card(model, dm)
    example = model.objective.example(model, dm)
    if example is None:
        example = contract.raw_example(card, dm)
    net = model.inference_model().cpu().eval()
    tokenizer = dm.tokenizer_path if dm.meta["kind"] == "text" else None
    return tracking.log_model(uri, run_id, net, card, example, scratch, tokenizer)


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
    with tempfile.TemporaryDirectory() as scratch:
        uri = _log_model(
            info["mlflow_tracking_uri"],
            info["mlflow_run_id"],
            model.cpu().eval(),
            dm,
            Path(scratch),
        )
    atomic_write_json(out / "model" / "run.json", {**info, "model_uri": uri})
    return uri
