"""Trials per hour with 1 and 2 trials at a time, and the platform's per-trial overhead.

    python bench/sweep_parallel.py                     # 8 trials of the digits CNN, 30 epochs
    python bench/sweep_parallel.py --trials 12 --epochs 40 --settings 1,2,1,2

Each setting is a real `assay sweep` (random sampler, no pruning, one torch thread per trial so
two trials on 2 cores don't fight; see PITFALLS), one after another in this process, on the same
seed and so the same trials. Trials per hour: trials / (sweep wall time from the first trial's
start to the last trial's end). Overhead: from the moment a trial's Ray task starts to its first
training step (config, data, model, MLflow child run, Optuna, Lightning's set-up and sanity
check), as each trial records it (`overhead_s`). A worker process's first trial also imports
torch/Lightning/MLflow: shown apart as "cold". Last, the machine's own ceiling: the same CNN's
bare training loop (no Lightning, no Ray, no tracking) in one process, then two side by side.
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

from ceiling import ceiling  # noqa: E402
from sweep_efficiency import project, run, sweep_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--settings", default="1,2", help="trials at once, comma-separated")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--dataset", default="digits", help="e.g. mnist (with --arch mlp)")
    ap.add_argument("--arch", default="cnn")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the raw 1-vs-2 process check")
    args = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    root = project(args.root, args.dataset)
    console = Console(width=130)
    table = Table(
        "parallel",
        "trials",
        "wall s",
        "trials/hour",
        "x parallel 1",
        "trial s (median)",
        "overhead s median",
        "p90",
        "cold (first per worker)",
        title=f"{args.dataset} {args.arch} sweeps: {args.trials} trials x {args.epochs} epochs, "
        "1 thread a trial",
    )
    base = None
    stamp = time.strftime("%H%M%S")  # new studies each run
    for i, setting in enumerate(args.settings.split(",")):
        parallel = int(setting)
        _, study = run(
            root,
            sweep_file(
                root,
                f"par{parallel}-{i}-e{args.epochs}-{stamp}",
                "random",
                "none",
                0,
                args.trials,
                args.epochs,
                parallel=parallel,
                dataset=args.dataset,
                arch=args.arch,
            ),
        )
        trials = study.trials
        start = min(t.datetime_start for t in trials)
        end = max(t.datetime_complete for t in trials)
        wall = (end - start).total_seconds()
        per_hour = len(trials) / wall * 3600
        base = base or (per_hour if parallel == 1 else None)
        durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
        over = [t.user_attrs.get("overhead_s") for t in trials]
        # a worker's first trial pays its imports: the first `parallel` trials
        firsts = sorted(trials, key=lambda t: t.datetime_start)[:parallel]
        cold = [t.user_attrs.get("overhead_s") for t in firsts]
        warm = sorted(o for t, o in zip(trials, over, strict=True) if t not in firsts and o)
        table.add_row(
            str(parallel),
            str(len(trials)),
            f"{wall:.0f}",
            f"{per_hour:.0f}",
            f"{per_hour / base:.2f}" if base else "-",
            f"{statistics.median(durations):.1f}",
            f"{statistics.median(warm):.3f}" if warm else "-",
            f"{warm[int(0.9 * (len(warm) - 1))]:.3f}" if warm else "-",
            ", ".join(f"{c:.2f}" for c in cold if c),
        )
        console.print(f"parallel {parallel}: {per_hour:.0f} trials/hour")
    console.print(table)
    if not args.no_ceiling:
        one, two = ceiling(root, args.dataset, args.arch, batch_size=64)
        console.print(
            f"the machine's ceiling: the same model's bare training loop (batch 64) alone "
            f"{one:.0f} samples/s in one process, {two:.0f} summed over two side by side: "
            f"{two / one:.2f}x"
        )


if __name__ == "__main__":
    main()
