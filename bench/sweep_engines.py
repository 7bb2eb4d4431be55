"""Two ways to run a sweep's trials on Ray, side by side on the same trainings: Optuna's own loop
(`assay sweep`: each trial a Ray task running `study.optimize(n_trials=1)` on the shared study,
heartbeat on) against Ray Tune (`Tuner` with `OptunaSearch` and `max_concurrent_trials`).

    python bench/sweep_engines.py              # 8 trials, digits CNN, 20 epochs, 2 at once
    python bench/sweep_engines.py --trials 12 --rounds 3

Both train with `assay.training.train` on the same base config (the sweep file's), the same
search space (lr and dropout: a trial's cost does not depend on them), the random sampler, one
torch thread and one CPU a trial, an MLflow child run and an offline W&B run each, and report
val/acc every epoch (to Optuna's storage / to Tune). Interleaved, `--rounds` times each (these
machines are noisy). Printed per engine: end-to-end wall (from the call to its return: Ray's
start, the study or experiment set-up, the trials, the summary), the trials' span (first start to
last end), trials per hour over that span, and the median trial. What each offers for a killed
trial or driver is in the README ("Sweeps: why Optuna's loop on Ray tasks").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sweep_efficiency import project, sweep_file  # noqa: E402

SPACE = {
    "train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    "train.models.cnn.dropout": {"type": "float", "low": 0.0, "high": 0.5},
}


def optuna_on_ray(path: Path, root: Path) -> tuple[float, list[tuple[float, float]]]:
    """`assay sweep`: its wall, and each trial's (start, end) in seconds since the epoch."""
    import optuna

    from assay.sweep import load_sweep, run_sweep

    t0 = time.time()
    s = load_sweep(path, root=root)
    run_sweep(s)
    wall = time.time() - t0
    study = optuna.load_study(study_name=s.study, storage=s.storage)
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in study.trials]
    return wall, spans


def tune_trainable(config: dict, sweep) -> None:
    """A Ray Tune function trainable: the same training as a sweep trial, reporting each epoch."""
    import lightning.pytorch as pl
    from ray import tune

    from assay.sweep.load import trial_config
    from assay.training import RunOptions, train

    started = time.time()
    metric = sweep.cfg.objective.metric

    class Report(pl.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking and metric in trainer.callback_metrics:
                value = float(trainer.callback_metrics[metric])
                tune.report({metric: value, "t_start": started, "t_now": time.time()})

    cfg = trial_config(sweep, config, sweep.cfg.cpus_per_trial)
    name = tune.get_context().get_trial_name()
    result = train(
        cfg,
        sweep.root,
        RunOptions(
            run_name=name,
            out_dir=sweep.root / "outputs" / "tune" / name,
            callbacks=[Report()],
            log_model=False,
            progress_bar=False,
            wandb_after_fit=True,
        ),
    )
    # the end of the trial as Optuna's is timed: after the run's outputs and W&B, not the last epoch
    tune.report({metric: result.metrics[metric], "t_start": started, "t_now": time.time()})


def ray_tune(path: Path, root: Path, trials: int, parallel: int, reuse: bool = True):
    """Ray Tune on the same sweep file: its wall, and each trial's (start, end)."""
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from assay.sweep import load_sweep

    t0 = time.time()
    s = load_sweep(path, root=root)
    metric = s.cfg.objective.metric
    ray.init(num_cpus=parallel, include_dashboard=False, log_to_driver=False)
    try:
        space = {
            "train.lr": tune.loguniform(1.0e-3, 3.0e-2),
            "train.models.cnn.dropout": tune.uniform(0.0, 0.5),
        }
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(tune_trainable, sweep=s), {"cpu": 1}),
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=metric,
                mode="max",
                search_alg=OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=0)),
                num_samples=trials,
                max_concurrent_trials=parallel,
                reuse_actors=reuse,  # a finished trial's process takes the next (imports paid once)
            ),
            run_config=tune.RunConfig(
                storage_path=str(root / "ray_results"), name=s.study, verbose=0
            ),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    wall = time.time() - t0
    spans = [(r.metrics["t_start"], r.metrics["t_now"]) for r in grid if r.metrics]
    errors = [r.error for r in grid if r.error]
    if errors:
        raise SystemExit(f"Ray Tune trials failed: {errors[0]}")
    return wall, spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each engine, interleaved")
    ap.add_argument("--root", type=Path, default=None, help="a project folder to reuse (data)")
    ap.add_argument(
        "--no-reuse", action="store_true", help="Ray Tune: a new process per trial (its default)"
    )
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    root = project(args.root)
    stamp = time.strftime("%H%M%S")
    rows: dict[str, list[tuple[float, float, float, float]]] = {"optuna": [], "tune": []}
    for r in range(args.rounds):
        for engine in ("optuna", "tune"):
            name = f"engines-{engine}-{r}-{stamp}"
            path = sweep_file(
                root, name, "random", "none", 0, args.trials, args.epochs,
                parallel=args.parallel, space=SPACE,
            )  # fmt: skip
            if engine == "optuna":
                wall, spans = optuna_on_ray(path, root)
            else:
                wall, spans = ray_tune(path, root, args.trials, args.parallel, not args.no_reuse)
            span = max(e for _, e in spans) - min(s for s, _ in spans)
            trial = statistics.median(e - s for s, e in spans)
            rows[engine].append((wall, span, len(spans) / span * 3600, trial))
            print(f"round {r + 1} {engine}: wall {wall:.1f} s, trials span {span:.1f} s")
    table = Table(
        "engine", "wall s (median)", "trials span s", "trials/hour", "trial s (median)",
        title=f"{args.trials} trials x {args.epochs} epochs of the digits CNN, "
        f"{args.parallel} at once, {args.rounds} interleaved runs each (medians)",
    )  # fmt: skip
    for engine, label in (("optuna", "Optuna optimize on Ray tasks"), ("tune", "Ray Tune")):
        cols = list(zip(*rows[engine], strict=True))
        wall, span, per_hour, trial = (statistics.median(c) for c in cols)
        table.add_row(label, f"{wall:.1f}", f"{span:.1f}", f"{per_hour:.0f}", f"{trial:.1f}")
    Console(width=130).print(table)
    o = statistics.median(x[2] for x in rows["optuna"])
    t = statistics.median(x[2] for x in rows["tune"])
    print(f"trials/hour, Optuna's loop against Ray Tune: {o / t:.2f}x; root {root}")


if __name__ == "__main__":
    main()
