"""Does TPE with pruning (Hyperband by default) find what random search finds, for less training?

    python bench/sweep_efficiency.py                      # digits CNN, seeds 0 1 2
    python bench/sweep_efficiency.py --seeds 0 --tpe-trials 30
    python bench/sweep_efficiency.py --pruner asha        # one successive-halving ladder

For each seed: random search without pruning, RANDOM_TRIALS trials of EPOCHS epochs each (its
best validation accuracy is the target); then TPE + the pruner with the same space, seed and
epochs, trial after trial (parallel 1, so the order is the order of the trials). Reported: the
epochs and the wall time TPE+pruning spent until a completed trial reached the target, against
random search's total. Both are real `assay sweep`s (MLflow children, W&B offline), on digits
(8x8) because 20 full trials of the MNIST CNN take hours on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The pruners to set beside TPE, each with the short name its tables and study names use
# ("tpe-hb-..." studies of earlier runs are reused by name).
PRUNERS = {"hyperband": "HB", "asha": "ASHA", "median": "median"}

SPACE = {
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "train.optimizer": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
    "train.batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
    "train.models.cnn.dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "train.models.cnn.hidden": {"type": "int", "low": 16, "high": 256, "log": True},
}


def project(root: Path | None, dataset: str = "digits") -> Path:
    from assay.config import load_config
    from assay.data import fetch, prepare

    root = root or Path(tempfile.mkdtemp(prefix="assay-sweep-bench-"))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    if not (root / f"data/{dataset}/meta.json").exists():
        cfg = load_config(root=root)
        fetch(dataset, cfg.fetch, root)
        prepare(dataset, cfg.prepare, root)
    return root


def sweep_file(
    root: Path,
    study: str,
    sampler: str,
    pruner: str,
    seed: int,
    trials: int,
    epochs: int,
    parallel: int = 1,
    min_resource: int = 2,
    startup: int = 5,
    dataset: str = "digits",
    arch: str = "cnn",
    space: dict | None = None,
    wandb: str = "offline",
) -> Path:
    body = {
        "sweep": {
            "set": [
                f"train.dataset={dataset}",
                f"train.arch={arch}",
                f"train.max_epochs={epochs}",
                "train.early_stopping_patience=0",
                "train.scheduler=none",
                f"train.seed={seed}",
                f"tracking.wandb.mode={wandb}",
            ],
            "study": study,
            "objective": {"metric": "val/acc", "direction": "maximize"},
            "space": space or SPACE,
            "sampler": {"name": sampler, "seed": seed, "n_startup_trials": startup},
            "pruner": {"name": pruner, "min_resource": min_resource, "reduction_factor": 3},
            "trials": trials,
            "parallel": parallel,
            "register_best": False,
        }
    }
    path = root / f"{study}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run(root: Path, path: Path):
    import optuna

    from assay.sweep import load_sweep, run_sweep

    s = load_sweep(path, root=root)
    result = run_sweep(s)
    study = optuna.load_study(study_name=s.study, storage=s.storage)
    return result, study


def _storage(root: Path) -> str:
    return f"sqlite:///{(root / 'optuna.db').resolve()}"


def _studies(root: Path) -> list[str]:
    import optuna

    if not (root / "optuna.db").exists():
        return []
    return [s.study_name for s in optuna.get_all_study_summaries(_storage(root))]


def reach(study, target: float) -> tuple[int | None, float | None, int]:
    """Epochs and seconds spent, in trial order, until a complete trial's value >= target."""
    from optuna.trial import TrialState

    epochs, seconds = 0, 0.0
    for t in sorted(study.trials, key=lambda t: t.number):
        epochs += len(t.intermediate_values)
        if t.datetime_complete and t.datetime_start:
            seconds += (t.datetime_complete - t.datetime_start).total_seconds()
        if t.state == TrialState.COMPLETE and t.value is not None and t.value >= target - 1e-9:
            return epochs, seconds, t.number
    return None, None, -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--random-trials", type=int, default=20)
    ap.add_argument("--tpe-trials", type=int, default=40, help="TPE's budget (it may need fewer)")
    ap.add_argument("--root", type=Path, default=None, help="a project folder to reuse (data)")
    ap.add_argument(
        "--min-resource", type=int, default=1, help="Hyperband's first rung (epoch, from 0)"
    )
    ap.add_argument("--startup", type=int, default=5, help="TPE's random trials first")
    ap.add_argument(
        "--pruner",
        choices=list(PRUNERS),
        default="hyperband",
        help="the pruner beside TPE (hyperband splits the trials into brackets, and TPE then "
        "learns from one bracket's trials only; asha is one successive-halving ladder)",
    )
    ap.add_argument("--tag", default="", help="suffix for the study names (re-runs)")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    root = project(args.root)
    label = f"TPE+{PRUNERS[args.pruner]}"
    console = Console(width=130)
    table = Table(
        "seed",
        "random: best val/acc",
        "random: epochs",
        "random: s",
        f"{label}: reached at trial",
        f"{label}: epochs",
        f"{label}: s",
        "epochs ratio",
        f"{label} best (all trials)",
        title=f"digits CNN, {args.epochs} epochs a trial: {label} vs random search "
        f"({args.random_trials} trials, no pruning)",
    )
    ratios = []
    for seed in args.seeds:
        rnd_name = f"random-{seed}-e{args.epochs}-n{args.random_trials}"
        if rnd_name in _studies(root):  # the same seed, space and epochs: reuse it
            import optuna

            rnd = optuna.load_study(study_name=rnd_name, storage=_storage(root))
        else:
            rnd_file = sweep_file(
                root, rnd_name, "random", "none", seed, args.random_trials, args.epochs
            )
            _, rnd = run(root, rnd_file)
        target = rnd.best_value
        r_epochs = sum(len(t.intermediate_values) for t in rnd.trials)
        r_secs = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in rnd.trials)
        short = PRUNERS[args.pruner].lower()
        tpe_name = (
            f"tpe-{short}-{seed}-e{args.epochs}-m{args.min_resource}-s{args.startup}{args.tag}"
        )
        tpe_file = sweep_file(
            root,
            tpe_name,
            "tpe",
            args.pruner,
            seed,
            args.tpe_trials,
            args.epochs,
            min_resource=args.min_resource,
            startup=args.startup,
        )
        _, tpe = run(root, tpe_file)
        t_epochs, t_secs, at = reach(tpe, target)
        ratio = (t_epochs / r_epochs) if t_epochs else None
        ratios.append(ratio if ratio is not None else float("inf"))
        table.add_row(
            str(seed),
            f"{target:.4f}",
            str(r_epochs),
            f"{r_secs:.0f}",
            str(at) if at >= 0 else f"not in {args.tpe_trials}",
            str(t_epochs or "-"),
            f"{t_secs:.0f}" if t_secs else "-",
            f"{ratio:.2f}" if ratio else "-",
            f"{tpe.best_value:.4f}",
        )
        console.print(
            f"seed {seed}: random best {target:.4f} in {r_epochs} epochs; {label} "
            f"reached it after {t_epochs} epochs (trial {at})"
        )
    console.print(table)
    finite = [r for r in ratios if r != float("inf")]
    console.print(
        f"median epochs ratio {statistics.median(ratios):.2f} (target <= 0.33); "
        f"reached in {len(finite)}/{len(ratios)} seeds; project {root}"
    )


if __name__ == "__main__":
    main()
