"""Does the sweep driver's own cost per trial stay flat as the study grows?

    python bench/sweep_driver.py                          # 100 trials, digits mlp_tiny, 1 epoch
    python bench/sweep_driver.py --trials 200 --sampler tpe

One real `assay sweep` (Ray tasks, MLflow child runs, the study in SQLite; W&B off: it runs in the
trials, not the driver), `--parallel` trials at a time, each a tiny model for one epoch so the
driver is busy often. The driver records its own seconds for each trial: from the trial's result
arriving to the driver waiting on Ray again (counting the budget, printing the trials' events,
dispatching the next trial: `SweepResult.driver_seconds`; asking and telling Optuna happen in the
trial's own task). The old driver rescanned the whole study there after every trial. Printed: the
median of those per block of ten trials, and trials 91-100 against 1-10 (issue 15's bar: within
1.2x). The random sampler by default: TPE's own cost per ask grows with the trials it models, by
design, and would hide the driver's.
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

from sweep_efficiency import project, run, sweep_file  # noqa: E402

SPACE = {
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
    "train.optimizer": {"type": "categorical", "choices": ["adam", "sgd", "rmsprop"]},
    "train.batch_size": {"type": "categorical", "choices": [32, 64, 128]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--sampler", default="random", choices=["random", "tpe"])
    ap.add_argument("--root", type=Path, default=None, help="a project folder to reuse (data)")
    ap.add_argument("--tag", default="", help="suffix for the study name (re-runs)")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    root = project(args.root)
    name = f"driver-{args.sampler}-{args.trials}{args.tag}"
    # W&B off: it runs in the trials, not in the driver
    path = sweep_file(
        root, name, args.sampler, "none", 0, args.trials, 1, args.parallel,
        dataset="digits", arch="mlp_tiny", space=SPACE, wandb="disabled",
    )  # fmt: skip
    result, study = run(root, path)
    spent = [result.driver_seconds[n] for n in sorted(result.driver_seconds)]
    table = Table(title=f"driver seconds per trial, {args.sampler} sampler, {len(spent)} trials")
    for col in ("trials", "median ms", "max ms"):
        table.add_column(col, justify="right")
    for i in range(0, len(spent), 10):
        block = spent[i : i + 10]
        table.add_row(
            f"{i + 1}-{i + len(block)}",
            f"{1000 * statistics.median(block):.1f}",
            f"{1000 * max(block):.1f}",
        )
    Console().print(table)
    if len(spent) >= 20:
        first, last = statistics.median(spent[:10]), statistics.median(spent[-10:])
        print(
            f"trials {len(spent) - 9}-{len(spent)} against 1-10: {last / first:.2f}x "
            f"({1000 * last:.1f} ms against {1000 * first:.1f} ms, medians); "
            f"sweep {result.seconds:.0f} s, {sum(result.counts.values())} trials; root {root}"
        )
    # The baseline: what the driver before issue 15 added after every trial, a count of the
    # finished trials by a scan of the whole study, timed here on the study as it ended.
    from assay.sweep.worker import counted

    scans = []
    for _ in range(5):
        started = time.perf_counter()
        sum(counted(t) for t in study.get_trials(deepcopy=False))
        scans.append(time.perf_counter() - started)
    print(
        f"a rescan of the {len(study.trials)}-trial study (the old driver's, after every trial): "
        f"{1000 * statistics.median(scans):.1f} ms (median of 5), growing with the study"
    )


if __name__ == "__main__":
    main()
