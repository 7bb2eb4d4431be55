"""Ray Train scaling on this machine: the MNIST CNN (params.yaml's mnist-cnn run) trained
in-process and on 1 and 2 Ray workers, one after another in this process, then scored on the
test split.

    python bench/ray_scaling.py                   # full mnist-cnn (6 epochs) per setting
    python bench/ray_scaling.py --epochs 3 --settings 2x1,1x2
    python bench/ray_scaling.py --settings 1x1,2x1 --set train.batch_size=256
    python bench/ray_scaling.py --settings 1x1,2x1,2x1@train.batch_size=256

Each setting is WORKERSxCPUS_PER_WORKER (0x2: in-process, 2 threads), optionally followed by
@KEY=VALUE overrides of its own (several: @K=V@K=V); @env.NAME=VALUE sets an environment
variable for that setting only, read by the Ray it starts (@env.RAY_enable_metrics_collection=0).

Throughput is steady state: training samples per second between the end of the first epoch and
the end of the last, from the MLflow timestamps of each epoch's validation (so start-up and the
first epoch's warm-up are excluded). Start-up is what remains before the first epoch: Ray's
start, the worker group, DDP's process group, the data. Machines are noisy: compare ratios, and
re-run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="default: the mnist-cnn run's")
    ap.add_argument(
        "--settings", default="1x1,1x2,2x1", help="WORKERSxCPUS[@KEY=VALUE...], comma-separated"
    )
    ap.add_argument("--root", type=Path, default=None, help="a project folder to reuse (data)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument(
        "--no-ceiling", action="store_true", help="skip the bare-loop and bare-DDP references"
    )
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="KEY.PATH=VALUE for every setting, e.g. train.batch_size=256 (per worker)",
    )
    args = ap.parse_args()
    if args.epochs is not None and args.epochs < 2:
        ap.error("--epochs must be at least 2: steady state is measured from epoch 1 to the last")

    from mlflow.tracking import MlflowClient
    from rich.console import Console
    from rich.table import Table

    from assay.config import apply_overrides, load_config, validate
    from assay.data import fetch, prepare
    from assay.evaluation import evaluate
    from assay.training import train

    root = args.root or Path(tempfile.mkdtemp(prefix="assay-bench-"))
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    base = load_config(root=root).for_run("mnist-cnn")
    if not (root / "data/mnist/meta.json").exists():
        fetch("mnist", base.fetch, root)
        prepare("mnist", base.prepare, root)
    n_train = json.loads((root / "data/mnist/meta.json").read_text())["counts"]["train"]
    console = Console(width=120)
    rows = []
    for setting in args.settings.split(","):
        shape, *own = setting.split("@")
        workers, cpus = (int(v) for v in shape.lower().split("x"))
        sets = [
            f"train.workers={workers}",
            f"train.cpus_per_worker={cpus}",
            f"train.num_threads={cpus if workers == 0 else 0}",
            "train.early_stopping_patience=0",
        ]
        if args.epochs:
            sets.append(f"train.max_epochs={args.epochs}")
        env = dict(o[len("env.") :].split("=", 1) for o in own if o.startswith("env."))
        sets += args.overrides + [o for o in own if not o.startswith("env.")]
        cfg = validate(apply_overrides(base.model_dump(), sets))
        console.print(f"[bold]{setting}[/]: {workers or 'in-process'} x {cpus} CPU ...")
        started = time.time()
        with mock.patch.dict(os.environ, env):  # this setting's Ray only; restored after
            result = train(cfg, root)
        wall = time.time() - started
        test = evaluate(cfg, root).metrics["test/acc"]
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        run = client.get_run(result.run_id)
        ends = sorted(
            m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "val/acc")
        )
        epoch_s = statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))
        steady = n_train * (len(ends) - 1) / (ends[-1] - ends[0])
        startup = ends[0] - run.info.start_time / 1000 - epoch_s
        rows.append(
            {
                "setting": setting,
                "workers": workers,
                "cpus_per_worker": cpus,
                "epochs": len(ends),
                "samples_per_s": steady,
                "epoch_s": epoch_s,
                "startup_s": startup,
                "wall_s": wall,
                "test_acc": test,
            }
        )
    ref = rows[0]["samples_per_s"]
    extra = f" ({', '.join(args.overrides)})" if args.overrides else ""
    table = Table(title=f"MNIST CNN on {root}: {n_train} training samples per epoch{extra}")
    for col in (
        "setting",
        "epochs",
        "samples/s",
        f"x {rows[0]['setting']}",
        "epoch s",
        "start-up s",
        "wall s",
        "test acc",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["setting"],
            str(r["epochs"]),
            f"{r['samples_per_s']:.0f}",
            f"{r['samples_per_s'] / ref:.2f}",
            f"{r['epoch_s']:.1f}",
            f"{r['startup_s']:.1f}",
            f"{r['wall_s']:.0f}",
            f"{r['test_acc']:.4f}",
        )
    console.print(table)
    if not args.no_ceiling:
        from ceiling import samples_per_second

        t = cfg.train

        def rate(n: int, bucket: float | None = None) -> float:
            return samples_per_second(
                root,
                "mnist",
                t.arch,
                t.batch_size,
                n,
                ddp_bucket_mb=bucket,
                model_cfg=t.arch_config().model_dump(),
            )

        one, two, ddp = rate(1), rate(2), rate(2, 25.0)
        console.print(
            f"references, the same model and batch ({t.batch_size}) without Lightning or Ray, "
            f"1 thread a process: one process {one:.0f} samples/s; two independent processes "
            f"{two:.0f} ({two / one:.2f}x: the machine's ceiling); two DDP processes (gloo, "
            f"PyTorch's 25 MB buckets) {ddp:.0f} ({ddp / one:.2f}x)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
