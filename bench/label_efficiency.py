"""Learning from few labels: test accuracy against labels per class, from scratch and from a
self-supervised encoder, beside the classical baseline on the same labelled rows.

    python bench/label_efficiency.py                          # MNIST and Rotten Tomatoes
    python bench/label_efficiency.py --datasets mnist --ks 10 all --seeds 0
    python bench/label_efficiency.py --report     # the table and plot of the CSV's rows

For each data set, the pretrained encoder is a registered self-supervised model (SimCLR on the
MNIST training images, masked tokens on the Rotten Tomatoes training texts; no label read): its
champion, trained, scored and registered first from its experiments/ file when there is none. Its
alias is resolved once, so every run starts from the same version. Then, per K (labelled
examples per class of the training split, `train.labels_per_class`; `all`: every label) and seed,
three runs of the data set's supervised experiment (experiments/mnist-cnn.yaml,
experiments/rotten_tomatoes-transformer.yaml), each trained, scored on test once and tracked
like any run (MLflow experiment `label-efficiency`, W&B off):
  scratch    from a random initialisation
  probe      from the pretrained encoder, frozen: a linear probe
  finetune   from the pretrained encoder, all of it trained
  lp-ft      (only when asked: --modes) the probe first, then all of it from a third of the
             epochs on (`train.unfreeze_epoch`): linear probing then fine-tuning
Beside them, `evaluate`'s classical baseline fitted on the same K labelled rows and tuned on val
(logistic regression on pixels; TF-IDF n-grams + logistic regression on the tokens).

Protocol: val (whole, as for every run) picks the best epoch and stops early; test is scored once
per run. With few labels the epochs are more and the batches smaller (`budget`), the same for
every mode; `all` keeps the experiment's own (MNIST: 2 epochs, `ALL_EPOCHS`). Printed: mean and
standard deviation over seeds, as a Markdown table; written: bench/results/label_efficiency.csv
(one row per run; `--resume` skips the rows already there) and .png.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
# data set -> (supervised experiment, self-supervised experiment)
SETUPS = {
    "mnist": ("mnist-cnn", "mnist-cnn-contrastive"),
    "rotten_tomatoes": ("rotten_tomatoes-transformer", "rotten_tomatoes-transformer-masked_tokens"),
}
MODES = ("scratch", "probe", "finetune", "lp-ft")
DEFAULT_MODES = MODES[:3]
LABELS = {"scratch": "scratch", "probe": "linear probe", "finetune": "fine-tuned", "lp-ft": "LP-FT"}
# With every label, MNIST's CNN is within a few tenths of a point of its best after 2 epochs;
# its experiment's 10 would make the 9 full runs most of the bench's time.
ALL_EPOCHS = {"mnist": 2}
FIELDS = ["dataset", "k", "mode", "seed", "test_acc", "baseline_acc", "epochs", "seconds"]


def budget(k: int, classes: int, batch: int) -> dict:
    """Few labelled rows: ten batches an epoch (of 8 rows at least, the experiment's size at
    most) and ~150 steps (10 to 20 epochs; each epoch's val pass over the whole val split is most
    of a small run's time), early stopping after 5 epochs without a gain on val."""
    n = k * classes
    size = max(8, min(batch, n // 10))
    epochs = max(10, min(20, math.ceil(150 / math.ceil(n / size))))
    return {"batch_size": size, "max_epochs": epochs, "early_stopping_patience": 5}


def source(root: Path, dataset: str) -> str:
    """The pretrained encoder's models:/NAME/VERSION: the champion of its self-supervised
    experiment, trained, scored and registered first when it has none."""
    from assay import tracking
    from assay.config import load_config
    from assay.evaluation import evaluate
    from assay.registry import register
    from assay.training import train

    name = SETUPS[dataset][1]
    cfg = load_config(REPO / "experiments" / f"{name}.yaml", root=root)
    client = tracking.ensure_store(tracking.tracking_uri(cfg.tracking, root))
    uri = f"models:/{name}@{cfg.register.champion_alias}"
    try:
        version = tracking.resolve_model(client, uri)[0]["version"]
    except (tracking.TrackingError, ValueError):
        print(f"{uri}: none yet; pretraining it ({name}.yaml)", flush=True)
        train(cfg, root)
        evaluate(cfg, root)
        register(cfg, root)
        version = tracking.resolve_model(client, uri)[0]["version"]
    return f"models:/{name}/{version}"


def run_one(root: Path, dataset: str, k: int | None, mode: str, seed: int, encoder: str) -> dict:
    from assay.config import load_config, with_overrides
    from assay.data import datamodule
    from assay.evaluation import evaluate
    from assay.training import train

    cfg = load_config(REPO / "experiments" / f"{SETUPS[dataset][0]}.yaml", root=root)
    sets = {"seed": seed, "labels_per_class": k}
    if k is not None:
        classes = datamodule(dataset, root).task.num_classes
        sets |= budget(k, classes, cfg.train.batch_size)
    elif dataset in ALL_EPOCHS:
        sets["max_epochs"] = ALL_EPOCHS[dataset]
    if mode != "scratch":
        sets |= {"init_from": encoder, "freeze": "none" if mode == "finetune" else "encoder"}
    if mode == "lp-ft":
        epochs = sets.get("max_epochs", cfg.train.max_epochs)
        sets |= {"unfreeze_epoch": max(1, epochs // 3)}
    overrides = [f"train.{key}={'null' if v is None else v}" for key, v in sets.items()]
    # its own name: never the pipeline's outputs/mnist-cnn/ or registered model (the key adds
    # -probe/-ft and -k<K>; LP-FT's -ft is fine-tuning's, hence a name of its own)
    tag = "-lpft" if mode == "lp-ft" else ""
    overrides += [f"train.name=label-efficiency-{dataset}{tag}-s{seed}"]
    overrides += ["tracking.wandb.mode=disabled", "tracking.experiment=label-efficiency"]
    cfg = with_overrides(cfg, overrides)
    start = time.perf_counter()
    result = train(cfg, root)
    scores = evaluate(cfg, root).metrics
    return {
        "dataset": dataset,
        "k": "all" if k is None else k,
        "mode": mode,
        "seed": seed,
        "test_acc": round(scores["test/acc"], 4),
        "baseline_acc": round(scores.get("test/baseline/acc", float("nan")), 4),
        "epochs": result.epochs,
        "seconds": round(time.perf_counter() - start, 1),
    }


def summary(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (dataset, K, mode), and the baseline's."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], str(r["k"]), r["mode"]), []).append(r)
    out = []
    for (dataset, k, mode), rs in groups.items():
        acc = [float(r["test_acc"]) for r in rs]
        base = [float(r["baseline_acc"]) for r in rs]
        out.append(
            {
                "dataset": dataset,
                "k": k,
                "mode": mode,
                "n": len(rs),
                "mean": statistics.mean(acc),
                "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "baseline": statistics.mean(base),
            }
        )
    return out


def markdown(stats: list[dict]) -> str:
    """One row per (data set, K): each mode's mean ± std, the baseline, pretrained - scratch."""
    present = [m for m in MODES if any(s["mode"] == m for s in stats)]
    lines = [
        f"| data set | labels per class | {' | '.join(LABELS[m] for m in present)} | baseline (LR) "
        "| best pretrained - scratch |",
        "|---|---:|" + "---:|" * (len(present) + 2),
    ]
    cells: dict[tuple, dict] = {}
    for s in stats:
        cells.setdefault((s["dataset"], s["k"]), {})[s["mode"]] = s
    for (dataset, k), modes in cells.items():
        shown = [
            f"{modes[m]['mean']:.4f} ± {modes[m]['std']:.4f}" if m in modes else "-"
            for m in present
        ]
        gain = ""
        pretrained = [m for m in modes if m != "scratch"]
        if "scratch" in modes and pretrained:
            best = max(modes[m]["mean"] for m in pretrained)
            gain = f"{100 * (best - modes['scratch']['mean']):+.1f} pts"
        base = next(iter(modes.values()))["baseline"]
        n = next(iter(modes.values()))["n"]
        lines.append(f"| {dataset} | {k} | {' | '.join(shown)} | {base:.4f} | {gain} |")
    lines.append(f"\n(mean ± standard deviation over {n} seeds; test accuracy)")
    return "\n".join(lines)


def plot(stats: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(s["dataset"] for s in stats))
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        part = [s for s in stats if s["dataset"] == dataset]
        ks = sorted({s["k"] for s in part}, key=lambda k: math.inf if k == "all" else int(k))
        x = range(len(ks))
        for mode in MODES:
            got = {s["k"]: s for s in part if s["mode"] == mode}
            if got:
                xs = [i for i, k in enumerate(ks) if k in got]
                ys = [got[ks[i]]["mean"] for i in xs]
                err = [got[ks[i]]["std"] for i in xs]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=LABELS[mode])
        base = {s["k"]: s["baseline"] for s in part}
        label = "baseline: logistic regression (text: TF-IDF)"
        ax.plot(x, [base[k] for k in ks], "k--", label=label)
        ax.set_xticks(list(x), [str(k) for k in ks])
        ax.set_xlabel("labelled examples per class")
        ax.set_ylabel("test accuracy")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Few labels: from scratch vs from a self-supervised encoder (mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run_missing(args, table: Path, rows: list[dict]) -> None:
    """Run every (data set, K, seed, mode) asked that `rows` lacks; the CSV is rewritten with
    `rows` first and gains each new row as it ends (appended to `rows` too)."""
    done = {(r["dataset"], str(r["k"]), r["mode"], int(r["seed"])) for r in rows}
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        for dataset in args.datasets:
            encoder = source(args.root, dataset)
            print(f"{dataset}: pretrained encoder {encoder}", flush=True)
            for k in args.ks:
                for seed in args.seeds:
                    for mode in args.modes:
                        if (dataset, k, mode, seed) in done:
                            continue
                        kk = None if k == "all" else int(k)
                        row = run_one(args.root, dataset, kk, mode, seed, encoder)
                        print(row, flush=True)
                        rows.append(row)
                        writer.writerow(row)
                        f.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, default=REPO, help="the project folder (data prepared)")
    ap.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--ks", nargs="+", default=["10", "50", "100", "all"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
    ap.add_argument("--resume", action="store_true", help="keep the rows the CSV already has")
    ap.add_argument("--report", action="store_true", help="only the table and plot of the CSV")
    ap.add_argument("--out", type=Path, default=RESULTS / "label_efficiency.csv", help="the CSV")
    args = ap.parse_args()

    table = args.out
    table.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if (args.resume or args.report) and table.exists():
        with table.open() as f:
            rows = list(csv.DictReader(f))
    if not args.report:
        run_missing(args, table, rows)
    stats = summary(rows)
    plot(stats, table.with_suffix(".png"))
    print(markdown(stats))


if __name__ == "__main__":
    sys.exit(main())
