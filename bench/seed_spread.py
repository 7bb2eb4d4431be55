"""How far a run's primary test metric moves from seed to seed: the measure behind each
objective's default `assay reproduce --tolerance` (`Objective.reproduce_tolerance`).

    python bench/seed_spread.py --root P                        # the default runs, seeds 0 1 2
    python bench/seed_spread.py --root P --runs digits-mlp --seeds 0 1 2 3 4
    python bench/seed_spread.py --root P --runs digits-gan --set train.dataset=digits \
        train.arch=gan_tiny train.max_epochs=20     # a run of params.yaml's defaults, named
    python bench/seed_spread.py --root P --runs shuttle-vae --also test/pr_auc \
        test/baseline/pr_auc                        # more test metrics: per seed, mean, std

Each run (a named run of params.yaml, or an experiments/ file) is trained and scored once per
seed, in one process, in the project folder P (its data fetched and prepared first, W&B off).
Printed: the primary metric per seed, its range (max - min) and standard deviation per run. A
reproduction runs the same seed, so on one machine it lands far closer than this; the spread is
the bound for another machine, thread count or library build.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

# one run per objective that a project's params.yaml or experiments/ trains by default
RUNS = [
    "digits-mlp",  # classification
    "shuttle-autoencoder",  # anomaly
    "movielens-matrix_factorization",  # rating
    "elecdemand-lstm",  # forecast
    "mnist-autoencoder",  # reconstruction
]


def config(root: Path, run: str, seed: int, sets: list[str]):
    """An experiments/ file, else a named run of params.yaml, else params.yaml's defaults under
    the name `run`; then `sets` (--set), the seed and its own key."""
    from assay.config import load_config, with_overrides

    if (REPO / "experiments" / f"{run}.yaml").exists():
        cfg = load_config(REPO / "experiments" / f"{run}.yaml", root=root)
    elif run in load_config(root=root).runs:
        cfg = load_config(root=root).for_run(run)
    else:
        cfg = load_config(root=root)
    own = [f"train.seed={seed}", f"train.name={run}-seed{seed}", "tracking.wandb.mode=disabled"]
    return with_overrides(cfg, [*sets, *own])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="a project folder (data kept)")
    ap.add_argument("--runs", nargs="+", default=RUNS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], help="KEY=VALUE overrides for every run")
    ap.add_argument(
        "--also", nargs="*", default=[], help="more metrics: test/..., val/... (best epoch)"
    )
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from assay.data import fetch, prepare
    from assay.evaluation import evaluate
    from assay.paths import output_dir
    from assay.training import train

    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "params.yaml").exists():
        (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    table = Table(title=f"primary test metric by seed ({', '.join(map(str, args.seeds))})")
    for col in ("run", "objective", "metric", "per seed", "range", "std", "mean"):
        table.add_column(col)
    for run in args.runs:
        values = []
        also: dict[str, list[float]] = {m: [] for m in args.also}
        for seed in args.seeds:
            cfg = config(root, run, seed, args.set)
            ds = cfg.train.dataset
            if not (root / "data" / ds / "meta.json").exists():
                fetch(ds, cfg.fetch, root)
                prepare(ds, cfg.prepare, root)
            trained = train(cfg, root)
            scores = {**trained.metrics, **evaluate(cfg, root).metrics}  # val (best epoch), test
            info = json.loads((output_dir(cfg.train.key, root) / "model/run.json").read_text())
            metric, objective = info["primary_metric"][0], info["objective"]
            values.append(scores[metric])
            for m in args.also:
                also[m].append(scores.get(m, float("nan")))
            more = "".join(f", {m} {also[m][-1]:.4f}" for m in args.also)
            print(f"{run} seed {seed}: {metric} {values[-1]:.4f}{more}", flush=True)
        for i, (metric_, vals) in enumerate([(metric, values), *also.items()]):
            spread = max(vals) - min(vals)
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            table.add_row(
                run if i == 0 else "", objective if i == 0 else "", metric_,
                " ".join(f"{v:.4f}" for v in vals), f"{spread:.4f}", f"{std:.4f}",
                f"{statistics.fmean(vals):.4f}",
            )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
