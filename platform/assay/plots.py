"""Pictures people would rather look at than read: learning curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metric_axis_label(history: list[dict[str, float]]) -> str:
    """The right-hand panel's y label: the names of the metrics it draws (acc, rmse, roc_auc...),
    not "accuracy" for all of them."""
    keys = {k for h in history for k in h if k != "epoch" and not k.endswith("loss")}
    return ", ".join(sorted({k.rsplit("/", 1)[-1] for k in keys})) or "(no metric besides loss)"


def learning_curve(history: list[dict[str, float]], path: Path, title: str) -> Path:
    """`history`: one dict per epoch with `epoch` and metric keys (train/loss, val/acc, ...)."""
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h if k != "epoch"}):
        ax = ax_loss if key.endswith("loss") else ax_metric
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    for ax, name in ((ax_loss, "loss"), (ax_metric, metric_axis_label(history))):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix(cm: np.ndarray, classes: list[str], path: Path, title: str) -> Path:
    """`cm[i, j]`: examples of true class i predicted as j."""
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.5 * k, 1 + 0.5 * k))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            color = "white" if cm[i, j] > cm.max() / 2 else "black"
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    return _save(fig, path)


def forecast(
    actual: np.ndarray, preds: dict[str, np.ndarray], path: Path, title: str, units: str = ""
) -> Path:
    """A stretch of the test period: the actual series and each forecaster's day-ahead forecasts."""
    fig, ax = plt.subplots(figsize=(12, 4))
    ax.plot(actual, color="black", lw=1.5, label="actual")
    for name, p in preds.items():
        ax.plot(p, lw=1, label=name, linestyle="--" if "naive" in name else "-")
    ax.set_xlabel("half-hour steps into the test period")
    ax.set_ylabel(units)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def image_grid(
    rows: list[np.ndarray], path: Path, title: str, labels: list[str] | None = None
) -> Path:
    """`rows`: arrays (n, C, H, W) in [0, 1]; one row of the grid each (originals, reconstructions)
    or one long batch wrapped into rows of 8 (samples)."""
    if len(rows) == 1 and len(rows[0]) > 10:
        batch = rows[0]
        rows = [batch[i : i + 8] for i in range(0, len(batch), 8)]
    n_cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(1.1 * n_cols, 1.2 * len(rows)), squeeze=False
    )
    for r, imgs in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(imgs[c][0], cmap="gray", vmin=0, vmax=1)
        if labels:
            axes[r][0].set_title(labels[r], fontsize=8, loc="left")
    fig.suptitle(title)
    return _save(fig, path)


def latent_scatter(z2: np.ndarray, labels: np.ndarray, path: Path, title: str, names=None) -> Path:
    """A 2-D view of the latent codes, coloured by label."""
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(z2[:, 0], z2[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7)
    handles, _ = sc.legend_elements()
    ax.legend(handles, names or [str(v) for v in np.unique(labels)], fontsize=7, markerscale=0.8)
    ax.set_title(title)
    return _save(fig, path)


def score_histogram(scores: np.ndarray, labels: np.ndarray, path: Path, title: str) -> Path:
    """Anomaly scores of normal vs anomalous rows (log-scaled counts)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(np.log10(scores + 1e-12), bins=60)
    for value, name in ((0, "normal"), (1, "anomaly")):
        ax.hist(np.log10(scores[labels == value] + 1e-12), bins=bins, alpha=0.6, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("log10 reconstruction error")
    ax.set_ylabel("rows")
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def attention(maps: list[np.ndarray], ticks: list[list[str]], path: Path, title: str) -> Path:
    """Self-attention weights (query x key), one panel per example."""
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 4.5), squeeze=False)
    for ax, m, t in zip(axes[0], maps, ticks, strict=True):
        ax.imshow(m, cmap="viridis")
        if t and len(t) <= 40:
            ax.set_xticks(range(len(t)), t, rotation=90, fontsize=6)
            ax.set_yticks(range(len(t)), t, fontsize=6)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.suptitle(title)
    return _save(fig, path)
