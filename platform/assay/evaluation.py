"""`assay evaluate`: one scorer per objective, each on the test split.

A scorer returns the test metrics and writes its pictures and tables into a folder; `evaluate`
adds both to the training run in MLflow and W&B, then writes `outputs/<key>/metrics.json` and
`outputs/<key>/eval/` (DVC metrics and plots), whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assay import artifacts, plots, tracking
from assay.config import AssayConfig
from assay.data import ArrayDataModule, datamodule, sha256_file
from assay.models import get_entry
from assay.paths import atomic_dir, atomic_write_json, find_root, output_dir

Scorer = Callable[..., tuple[dict[str, float], int]]


@dataclass
class EvalResult:
    key: str
    run_id: str
    metrics: dict[str, float]  # the objective's test metrics (test/acc, test/rmse, ...)


def _batched(fn, *tensors: torch.Tensor, size: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        parts = zip(*(torch.split(t, size) for t in tensors), strict=True)
        return torch.cat([fn(*p) for p in parts])


# ------------------------------------------------------------------------------ classification
def score_classification(model, dm: ArrayDataModule, out: Path, title: str, **_):
    from torchmetrics.functional.classification import (
        binary_auroc,
        binary_f1_score,
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
    )

    x, y = dm.load_split("test")
    logits = _batched(model, x)
    k = dm.task.num_classes
    metrics = {
        "test/acc": float(multiclass_accuracy(logits, y, num_classes=k, average="micro")),
        "test/loss": float(torch.nn.functional.cross_entropy(logits, y)),
    }
    if k == 2:
        p1 = torch.softmax(logits, -1)[:, 1]
        metrics["test/f1"] = float(binary_f1_score(p1, y))
        metrics["test/roc_auc"] = float(binary_auroc(p1, y))
    else:
        metrics["test/f1_macro"] = float(multiclass_f1_score(logits, y, num_classes=k))
    cm = multiclass_confusion_matrix(logits, y, num_classes=k).numpy()
    pred = logits.argmax(-1).numpy()
    classes = dm.task.class_names
    rows = "".join(f"{classes[a]},{classes[p]}\n" for a, p in zip(y.numpy(), pred, strict=True))
    (out / "confusion.csv").write_text("actual,predicted\n" + rows)
    plots.confusion_matrix(
        cm, classes, out / "confusion.png", f"{title}: test acc {metrics['test/acc']:.4f}"
    )
    if hasattr(model, "attention_maps"):
        _attention_png(model, x[:3], dm, out, title)
    return metrics, len(y)


def _attention_png(model, x: torch.Tensor, dm: ArrayDataModule, out: Path, title: str) -> None:
    with torch.no_grad():
        maps = model.attention_maps(x).numpy()  # (B, T, T)
    ticks: list[list[str]] = []
    panels = []
    if dm.meta["kind"] == "text":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(dm.tokenizer_path))
        for ids, m in zip(x.numpy(), maps, strict=True):
            n = max(1, int((ids != 0).sum()))
            ticks.append([tok.id_to_token(int(i)) for i in ids[:n]])
            panels.append(m[:n, :n])
    else:
        panels, ticks = list(maps), [[] for _ in maps]
    plots.attention(panels, ticks, out / "attention.png", f"{title}: last layer, mean of heads")


# ------------------------------------------------------------------------------------ forecast
def score_forecast(model, dm, out: Path, title: str, **_):
    x, y = dm.load_split("test")
    pred = _batched(model, x)
    naive = dm.seasonal_naive(x)

    def rmse(p):
        return float(torch.sqrt(torch.mean((p - y) ** 2)))

    def mae(p):
        return float(torch.mean(torch.abs(p - y)))

    metrics = {
        "test/mae": mae(pred),
        "test/rmse": rmse(pred),
        "test/naive_mae": mae(naive),
        "test/naive_rmse": rmse(naive),
    }
    metrics["test/skill"] = 1 - metrics["test/rmse"] / metrics["test/naive_rmse"]
    # A week of the test period as consecutive day-ahead forecasts (one window per day).
    h = dm.meta["horizon"]
    days = np.arange(0, min(len(y), 7 * dm.meta["steps_per_day"]), h)
    actual, ours, base = (a[days].reshape(-1).numpy() for a in (y, pred, naive))
    plots.forecast(
        actual,
        {title: ours, f"seasonal naive ({dm.meta['season']} steps)": base},
        out / "forecast.png",
        f"{title}: day-ahead forecasts, RMSE {metrics['test/rmse']:.3f} vs naive "
        f"{metrics['test/naive_rmse']:.3f} {dm.meta['units']}",
        dm.meta["units"],
    )
    lines = "".join(
        f"{i},{a:.5f},{o:.5f},{b:.5f}\n"
        for i, (a, o, b) in enumerate(zip(actual, ours, base, strict=True))
    )
    (out / "forecast.csv").write_text("step,actual,forecast,seasonal_naive\n" + lines)
    if hasattr(model, "attention_maps"):
        _attention_png(model, x[:2], dm, out, title)
    return metrics, len(y)


# -------------------------------------------------------------------- reconstruction / anomaly
def _latent_png(model, x, labels, out: Path, title: str, names=None) -> None:
    z = _batched(model.encode, x).numpy()
    if z.shape[1] > 2:
        from sklearn.decomposition import PCA

        z = PCA(2, random_state=0).fit_transform(z)
        title += " (PCA of the latent codes)"
    plots.latent_scatter(z, labels, out / "latent.png", title, names)


def score_reconstruction(model, dm, out: Path, title: str, **_):
    x, y = dm.load_split("test")
    recon = _batched(model.reconstruct, x)
    metrics = {"test/mse": float(torch.mean((recon - x) ** 2))}
    plots.image_grid(
        [x[:10].numpy(), recon[:10].numpy()],
        out / "reconstructions.png",
        f"{title}: test MSE {metrics['test/mse']:.4f}",
        ["original", "reconstruction"],
    )
    sub = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:3000]
    _latent_png(
        model, x[sub], y[sub].numpy(), out, f"{title}: test latent space", dm.task.class_names
    )
    return metrics, len(y)


def score_anomaly(model, dm, out: Path, title: str, **_):
    from torchmetrics.functional.classification import binary_auroc, binary_average_precision

    x, y = dm.load_split("test")
    scores = _batched(model.anomaly_score, x)
    metrics = {
        "test/roc_auc": float(binary_auroc(scores, y)),
        "test/pr_auc": float(binary_average_precision(scores, y)),
        "test/mse_normal": float(scores[y == 0].mean()),
        "test/mse_anomaly": float(scores[y == 1].mean()),
    }
    plots.score_histogram(
        scores.numpy(),
        y.numpy(),
        out / "scores.png",
        f"{title}: ROC-AUC {metrics['test/roc_auc']:.4f}, PR-AUC {metrics['test/pr_auc']:.4f}",
    )
    _latent_png(model, x, y.numpy(), out, f"{title}: test latent space", ["normal", "anomaly"])
    return metrics, len(y)


# ---------------------------------------------------------------------------------- generation
def score_generation(model, dm, out: Path, title: str, cfg: AssayConfig, root: Path, **_):
    from assay.generation import Judge

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


# -------------------------------------------------------------------------------------- rating
def score_rating(model, dm, out: Path, title: str, **_):
    from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG

    u, i, _, r = dm.load_split("test")  # the position of every test rating is "now"
    lo, hi = dm.task.rating_range
    pred = _batched(model, u, i, size=8192).clamp(lo, hi)
    metrics = {
        "test/rmse": float(torch.sqrt(torch.mean((pred - r) ** 2))),
        "test/mae": float(torch.mean(torch.abs(pred - r))),
    }
    cand = torch.from_numpy(dm.arrays("test")["rank_items"])  # (users, 1 + negatives)
    users = torch.arange(len(cand))[:, None].expand_as(cand)
    scores = _batched(model, users.reshape(-1), cand.reshape(-1), size=65536)
    target = torch.zeros_like(cand, dtype=torch.bool)
    target[:, 0] = True
    for name, metric in (
        ("hr_at_10", RetrievalHitRate(top_k=10)),
        ("ndcg_at_10", RetrievalNormalizedDCG(top_k=10)),
    ):
        metrics[f"test/{name}"] = float(
            metric(scores, target.reshape(-1), indexes=users.reshape(-1))
        )
    return metrics, len(r)


SCORERS: dict[str, Scorer] = {
    "classification": score_classification,
    "forecast": score_forecast,
    "reconstruction": score_reconstruction,
    "anomaly": score_anomaly,
    "generation": score_generation,
    "rating": score_rating,
}


def evaluate(cfg: AssayConfig, root: Path | None = None, out: Path | None = None) -> EvalResult:
    """Score the trained run `cfg.train.key` on its test split. `out`: the trained run's folder
    (default outputs/<key>; a sweep's trial has its own). Refuses a folder whose run.json,
    checkpoint and MLflow run do not agree (`assay.artifacts`); what it writes names the run it
    scored."""
    t = cfg.train
    root = root or find_root()
    out = out or output_dir(t.key, root)
    how = artifacts.commands(cfg, root)
    info = artifacts.read_run_info(out, t.key, how)
    run_id = info["mlflow_run_id"]
    client = tracking.ensure_store(info["mlflow_tracking_uri"])
    artifacts.check_run_finished(client, info, out, how)
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    entry = get_entry(info["arch"])
    checkpoint = out / "model" / info.get("checkpoint", "best.ckpt")  # refit.ckpt after a refit
    model = entry.module_cls.load_from_checkpoint(checkpoint, map_location="cpu")
    model.eval()
    dm = datamodule(t.dataset, root, batch_size=cfg.evaluate.batch_size)
    dm.verify(("test",))  # before anything is written or logged
    with atomic_dir(out / "eval") as folder:
        metrics, n = SCORERS[model.objective](model, dm, folder, t.key, cfg=cfg, root=root)
        pngs = {p.stem: artifacts.stamp_png(p, run_id) for p in sorted(folder.glob("*.png"))}
        # the test split it scored: the champion gate compares only scores of the same split
        data_hash = sha256_file(dm.folder / "test.npz")
        scored = {"mlflow_run_id": run_id, "key": t.key, "checkpoint": checkpoint.name}
        atomic_write_json(folder / "run.json", {**scored, "data_hash": data_hash})
        for name, value in metrics.items():
            client.log_metric(run_id, name, value)
        client.set_tag(run_id, tracking.SCORED_ON, data_hash)
        client.log_artifacts(run_id, str(folder), "eval")
        tracking.log_wandb_summary(
            cfg.tracking, root, info.get("wandb_run_id"), info["run_name"], metrics, pngs
        )
    # names the run it scored: `register` refuses it for any other run's model
    atomic_write_json(out / "metrics.json", {**metrics, "n_test": int(n), "mlflow_run_id": run_id})
    return EvalResult(t.key, run_id, metrics)
