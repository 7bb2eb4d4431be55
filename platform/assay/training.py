"""Training and evaluation: `train(cfg) -> TrainResult`, `evaluate(cfg) -> EvalResult`.

Outputs of a run `<dataset>-<arch>` (all DVC outputs, each written whole or not at all):
  outputs/<key>/model/        best.ckpt, run.json (MLflow and W&B ids)      <- train
  outputs/<key>/history.csv, learning_curve.png                              <- train
  outputs/<key>/metrics.json, confusion.csv, confusion.png                   <- evaluate
"""

from __future__ import annotations

import csv
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from assay import plots, tracking
from assay.config import AssayConfig
from assay.data import ImageDataModule
from assay.paths import atomic_dir, atomic_write_bytes, atomic_write_json, find_root, read_json
from models import create_model, get_entry


@dataclass
class TrainResult:
    key: str
    run_id: str
    wandb_id: str | None
    checkpoint: Path
    metrics: dict[str, float]  # the best epoch's validation metrics
    seconds: float


@dataclass
class EvalResult:
    key: str
    run_id: str
    metrics: dict[str, float]  # test/acc, test/loss


def output_dir(key: str, root: Path) -> Path:
    return root / "outputs" / key


class History(Callback):
    """Epoch-level metrics as plain rows, for the learning-curve plot and DVC's history.csv."""

    KEYS = ("train/loss", "train/acc", "val/loss", "val/acc")

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                **{k: float(m[k]) for k in ("val/loss", "val/acc") if k in m},
            }
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = trainer.callback_metrics  # runs after validation: complete the epoch's row
        if self.rows and self.rows[-1]["epoch"] == trainer.current_epoch:
            self.rows[-1].update({k: float(m[k]) for k in ("train/loss", "train/acc") if k in m})

    def csv(self) -> bytes:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["epoch", *self.KEYS], extrasaction="ignore")
        w.writeheader()
        w.writerows(self.rows)
        return buf.getvalue().encode()


def _threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


def train(cfg: AssayConfig, root: Path | None = None) -> TrainResult:
    """Train `cfg.train.arch` on `cfg.train.dataset`, tracked in MLflow and W&B."""
    root = root or find_root()
    t = cfg.train
    started = time.perf_counter()
    pl.seed_everything(t.seed, workers=True, verbose=False)
    _threads(t.num_threads)
    dm = ImageDataModule(t.dataset, root, batch_size=t.batch_size, seed=t.seed)
    model = create_model(t.arch, task=dm.task, optim=t.optim(), **t.arch_config())
    entry = get_entry(t.arch)
    run_name = f"{t.key}-{time.strftime('%Y%m%d-%H%M%S')}"
    digest = cfg.digest()
    tags = {
        "dataset": t.dataset,
        "arch": t.arch,
        "family": entry.family,
        "assay.key": t.key,
        "params.digest": digest,
        **tracking.git_info(root),
        **tracking.data_hash(root, t.dataset),
    }
    params = {
        "train": t.model_dump(exclude={"models"}),
        "model": model.config.model_dump(),
        "data": {"dataset": t.dataset, **{f"n_{k}": v for k, v in dm.meta["counts"].items()}},
        "prepare": cfg.prepare.model_dump(),
        "params_digest": digest,
    }
    out = output_dir(t.key, root)
    with (
        tracking.TrackedRun(cfg, root, run_name, tags, params) as run,
        atomic_dir(out / "model") as model_dir,
        tempfile.TemporaryDirectory() as scratch,
    ):
        history = History()
        checkpoint = ModelCheckpoint(
            dirpath=model_dir,
            filename="best",
            monitor="val/loss",
            mode="min",
            save_top_k=1,
            auto_insert_metric_name=False,
        )
        callbacks: list[Callback] = [checkpoint, history]
        if t.early_stopping_patience > 0:
            callbacks.append(EarlyStopping("val/loss", patience=t.early_stopping_patience))
        trainer = pl.Trainer(
            max_epochs=t.max_epochs,
            accelerator=t.accelerator,
            devices=1,
            precision=t.precision,
            deterministic=t.deterministic,
            logger=run.loggers,
            callbacks=callbacks,
            default_root_dir=model_dir,
            log_every_n_steps=50,
            enable_model_summary=False,
        )
        trainer.fit(model, datamodule=dm)
        if trainer.interrupted:
            raise KeyboardInterrupt("training was interrupted")
        best = _best_scores(history)
        run.log_metrics({f"best_{k}": v for k, v in best.items()})
        # The best weights, not the last: log them as the MLflow model.
        best_model = type(model).load_from_checkpoint(checkpoint.best_model_path).cpu().eval()
        model_uri = _log_model(run, best_model, dm)
        run.log_artifact(Path(checkpoint.best_model_path), "checkpoints")
        curve = plots.learning_curve(history.rows, Path(scratch) / "learning_curve.png", run_name)
        run.log_image("learning_curve", curve)
        curve_png = curve.read_bytes()
        info = {
            "key": t.key,
            "arch": t.arch,
            "dataset": t.dataset,
            "run_name": run_name,
            "mlflow_run_id": run.run_id,
            "mlflow_experiment_id": run.experiment_id,
            "mlflow_tracking_uri": run.uri,
            "model_uri": model_uri,
            "wandb_run_id": run.wandb_id,
            "best_val": best,
            "epochs": trainer.current_epoch,
        }
        atomic_write_json(model_dir / "run.json", info)
    # Only once the run has succeeded: a failure above leaves none of the stage's outputs behind.
    atomic_write_bytes(out / "history.csv", history.csv())
    atomic_write_bytes(out / "learning_curve.png", curve_png)
    return TrainResult(
        t.key,
        run.run_id,
        run.wandb_id,
        out / "model" / "best.ckpt",
        best,
        time.perf_counter() - started,
    )


def _best_scores(history: History) -> dict[str, float]:
    """The validation metrics of the epoch ModelCheckpoint kept (lowest val/loss)."""
    best_epoch = min(history.rows, key=lambda r: r.get("val/loss", np.inf))
    return {k: float(v) for k, v in best_epoch.items() if k.startswith("val/")}


def _log_model(run: tracking.TrackedRun, model, dm: ImageDataModule) -> str:
    """Log the inference network (images in, class probabilities out) with a signature."""
    import mlflow
    from mlflow.models import infer_signature

    net = model.inference_model()
    example = dm.load_split("val")[0][:4].numpy()  # (4, C, H, W) float32 in [0, 1]
    with torch.no_grad():
        probs = net(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, probs)
    # pickle keeps our own class on load; explicit requirements spare 6-7 s of inference.
    with mlflow.start_run(run_id=run.run_id, nested=mlflow.active_run() is not None):
        logged = mlflow.pytorch.log_model(
            net,
            name="model",
            signature=signature,
            input_example=example,
            serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )
    return logged.model_uri  # models:/<model id>: what the registry registers


# -------------------------------------------------------------------------------------- evaluate
def evaluate(cfg: AssayConfig, root: Path | None = None) -> EvalResult:
    """Score the trained `<dataset>-<arch>` on its test split; write DVC metrics and plots and add
    them to the training run in MLflow and W&B."""
    root = root or find_root()
    t = cfg.train
    out = output_dir(t.key, root)
    info = read_json(out / "model" / "run.json", f"train it first: `assay train` for {t.key}")
    _threads(t.num_threads)
    entry = get_entry(info["arch"])
    model = entry.module_cls.load_from_checkpoint(out / "model" / "best.ckpt", map_location="cpu")
    dm = ImageDataModule(t.dataset, root, batch_size=cfg.evaluate.batch_size)
    x, y = dm.load_split("test")
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(xb) for xb in torch.split(x, cfg.evaluate.batch_size)])
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
    )

    k = dm.task.num_classes
    metrics = {
        "test/acc": float(multiclass_accuracy(logits, y, num_classes=k, average="micro")),
        "test/loss": float(torch.nn.functional.cross_entropy(logits, y)),
    }
    cm = multiclass_confusion_matrix(logits, y, num_classes=k).numpy()
    pred = logits.argmax(-1).numpy()
    classes = dm.task.class_names
    rows = "".join(f"{classes[a]},{classes[p]}\n" for a, p in zip(y.numpy(), pred, strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        png = plots.confusion_matrix(
            cm, classes, Path(tmp) / "confusion.png", f"{t.key}: test acc {metrics['test/acc']:.4f}"
        )
        client = tracking.ensure_store(info["mlflow_tracking_uri"])
        for name, value in metrics.items():
            client.log_metric(info["mlflow_run_id"], name, value)
        client.log_artifact(info["mlflow_run_id"], str(png), "plots")
        tracking.log_wandb_summary(
            cfg.tracking,
            root,
            info.get("wandb_run_id"),
            info["run_name"],
            metrics,
            {"confusion_matrix": png},
        )
        atomic_write_bytes(out / "confusion.csv", ("actual,predicted\n" + rows).encode())
        atomic_write_bytes(out / "confusion.png", png.read_bytes())
        atomic_write_json(out / "metrics.json", {**metrics, "n_test": int(len(y))})
    return EvalResult(t.key, info["mlflow_run_id"], metrics)
