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


def bars(names: list[str], values: list[float], path: Path, title: str, ylabel: str) -> Path:
    """One bar per name, its value written on it."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + 1.2 * len(names)), 3.6))
    drawn = ax.bar(names, values, color="#4c72b0")
    ax.bar_label(drawn, fmt="%.3f", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max([1.0, *values]) * 1.1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def slice_bars(table, overall: float, path: Path, title: str, metric: str) -> Path:
    """A metric per group (`table`: feature, group, value, count, judged), one panel per feature,
    bars sorted by value, the overall score as a dashed line; groups not judged are hatched."""
    features = list(dict.fromkeys(table["feature"]))
    sizes = [int((table["feature"] == f).sum()) for f in features]
    fig, axes = plt.subplots(
        len(features),
        1,
        figsize=(8, 1.2 + 0.28 * sum(sizes) + 0.6 * len(features)),
        gridspec_kw={"height_ratios": sizes},
        squeeze=False,
    )
    for ax, feature in zip(axes[:, 0], features, strict=True):
        part = table[table["feature"] == feature].sort_values("value")
        labels = [f"{g} (n={n})" for g, n in zip(part["group"], part["count"], strict=True)]
        bars = ax.barh(labels, part["value"], color="#4c72b0")
        for bar, judged in zip(bars, part["judged"], strict=True):
            if not judged:
                bar.set_hatch("//")
                bar.set_alpha(0.5)
        ax.axvline(overall, color="k", linestyle="--", linewidth=1, label=f"overall {overall:.4f}")
        ax.set_title(feature, fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel(f"test {metric}")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def attribution_images(x, ig, saliency, labels: list[str], path: Path, title: str) -> Path:
    """Per example (a row): the image, its Integrated Gradients (red for the class, blue
    against) over it, and its saliency map."""
    n = len(x)
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.3 * n), squeeze=False)
    for row, img, a, s, label in zip(axes, x, ig, saliency, labels, strict=True):
        img = img.mean(0)  # channels: one grey image
        a = a.sum(0)
        lim = float(np.abs(a).max()) or 1.0
        row[0].imshow(img, cmap="gray")
        row[0].set_title(label, fontsize=8)
        row[1].imshow(img, cmap="gray", alpha=0.4)
        row[1].imshow(a, cmap="bwr", vmin=-lim, vmax=lim, alpha=0.8)
        row[1].set_title("integrated gradients", fontsize=8)
        row[2].imshow(s.max(0), cmap="magma")
        row[2].set_title("saliency |grad|", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def attribution_tokens(tokens, ig, labels: list[str], path: Path, title: str) -> Path:
    """Per text (a row): its tokens left to right, coloured by Integrated Gradients."""
    width = max(len(t) for t in tokens)
    grid = np.full((len(tokens), width), np.nan)
    for k, (toks, a) in enumerate(zip(tokens, ig, strict=True)):
        grid[k, : len(toks)] = a[: len(toks)]
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * width), 0.9 + 0.8 * len(tokens)))
    ax.imshow(grid, cmap="bwr", vmin=-lim, vmax=lim, aspect="auto")
    for k, toks in enumerate(tokens):
        for j, t in enumerate(toks):
            ax.text(j, k, t, ha="center", va="center", fontsize=6, rotation=90)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"{title}\nintegrated gradients per token (red: for the class)", fontsize=9)
    return _save(fig, path)


def attribution_series(ig, features: list[str], labels: list[str], path: Path, title: str) -> Path:
    """Per window (a panel): Integrated Gradients of the mean forecast, features x steps."""
    n = len(ig)
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.2 + 0.35 * ig.shape[2] * n), squeeze=False)
    for ax, a, label in zip(axes[:, 0], ig, labels, strict=True):
        lim = float(np.abs(a).max()) or 1.0
        ax.imshow(a.T, cmap="bwr", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_yticks(range(a.shape[1]), features or range(a.shape[1]), fontsize=7)
        ax.set_title(label, fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("step of the input window (right: the latest)")
    fig.suptitle(f"{title}: integrated gradients of the mean forecast", fontsize=9)
    return _save(fig, path)
