"""The `assay` command: a thin layer over plain functions (config -> function -> result)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

# Telemetry off unless the user turned it on (see PITFALLS).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

app = typer.Typer(
    help="Assay: versioned data, Lightning models, MLflow + W&B tracking and a gated registry.\n\n"
    "The pipeline is `dvc repro`; these commands are its stages and the tools around it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

Experiment = Annotated[
    str | None,
    typer.Option("--experiment", "-e", help="experiments/NAME.yaml (or a path), over params.yaml"),
]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override KEY.PATH=VALUE (YAML value), e.g. train.lr=0.01"),
]
Run = Annotated[
    str | None,
    typer.Option("--run", "-r", help="a named run from params.yaml's `runs` (what dvc repro uses)"),
]
DATASET_HELP = (
    "digits, mnist, fashion_mnist (image); rotten_tomatoes (text); elecdemand (time series); "
    "shuttle (tabular anomalies); movielens (ratings)"
)
Dataset = Annotated[str | None, typer.Option(help="shortcut for --set train.dataset=...")]
Arch = Annotated[str | None, typer.Option(help="shortcut for --set train.arch=...")]


Workers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-w",
        help="Ray Train workers (DDP: gloo on CPU, NCCL on GPU); 0 trains in this process "
        "(train.workers)",
        min=0,
    ),
]
GpusPerWorker = Annotated[
    float | None, typer.Option(help="GPUs per Ray worker (train.gpus_per_worker)", min=0)
]
CpusPerWorker = Annotated[
    float | None, typer.Option(help="CPUs, and torch threads, per Ray worker", min=0.01)
]
Address = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to run on (ray.address; $RAY_ADDRESS); none: a local Ray for the run"
    ),
]


def _ray_sets(workers, gpus, cpus, address) -> list[str]:
    pairs = {
        "train.workers": workers,
        "train.gpus_per_worker": gpus,
        "train.cpus_per_worker": cpus,
        "ray.address": address,
    }
    return [f"{k}={v}" for k, v in pairs.items() if v is not None]


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _config(experiment=None, sets=None, run=None, dataset=None, arch=None):
    from assay.config import ConfigError, load_config

    overrides = list(sets or [])
    overrides += [f"train.dataset={dataset}"] if dataset else []
    overrides += [f"train.arch={arch}"] if arch else []
    try:
        cfg = load_config(experiment, [])
        if run:
            cfg = cfg.for_run(run)
        if overrides:
            from assay.config import apply_overrides, validate

            cfg = validate(apply_overrides(cfg.model_dump(), overrides))
        return cfg
    except ConfigError as e:
        _fail(str(e))


def _guarded(fn, *args, also: tuple[type[Exception], ...] = ()):
    """Call `fn`; errors that are the user's to fix become a message and exit code 2, no traceback.
    Anything else propagates with its traceback: that is a bug or a crash worth seeing whole."""
    from assay.config import ConfigError
    from assay.predict import PredictError
    from models.registry import UnknownModelError

    try:
        return fn(*args)
    except (ConfigError, PredictError, UnknownModelError, FileNotFoundError, *also) as e:
        _fail(str(e))


@app.command()
def fetch(dataset: Annotated[str, typer.Argument(help=f"one of: {DATASET_HELP}")]) -> None:
    """Bring a data set's raw file into data/raw/DATASET (checked against its sha256)."""
    from assay.data import fetch as do_fetch
    from assay.paths import find_root

    cfg = _config()
    path = _guarded(do_fetch, dataset, cfg.fetch, find_root(), also=(ValueError,))
    out.print(f"fetched {dataset} -> {path}")


@app.command()
def prepare(dataset: Annotated[str, typer.Argument(help=f"one of: {DATASET_HELP}")]) -> None:
    """Write fixed-seed train/val/test splits and meta.json to data/DATASET."""
    from assay.data import prepare as do_prepare
    from assay.paths import find_root

    cfg = _config()
    if dataset not in cfg.prepare.datasets:
        _fail(f"prepare.datasets is {cfg.prepare.datasets}; {dataset!r} is not among them")
    path = _guarded(do_prepare, dataset, cfg.prepare, find_root())
    out.print(f"prepared {dataset} -> {path}")


@app.command()
def train(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    cpus_per_worker: CpusPerWorker = None,
    address: Address = None,
) -> None:
    """Train one model, logged to MLflow and W&B at once.

    With --workers N it runs on Ray Train: DDP over N workers, a checkpoint every epoch, and
    worker crashes recovered from it (train.max_failures); still one MLflow and one W&B run.
    """
    from assay.training import train as do_train

    ray_sets = _ray_sets(workers, gpus_per_worker, cpus_per_worker, address)
    cfg = _config(experiment, [*(sets or []), *ray_sets], run, dataset, arch)
    result = _guarded(do_train, cfg)
    scores = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    out.print(
        f"trained {result.key} in {result.seconds:.0f} s: {scores}; "
        f"MLflow run {result.run_id}, W&B run {result.wandb_id}"
    )


@app.command()
def evaluate(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
) -> None:
    """Score a trained model on the test split; write DVC metrics and plots."""
    from assay.training import evaluate as do_evaluate

    cfg = _config(experiment, sets, run, dataset, arch)
    result = _guarded(do_evaluate, cfg)
    out.print(f"{result.key}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))


@app.command()
def register(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
) -> None:
    """Register a trained model; move `champion` to it only if it beats the current one."""
    from assay.registry import register as do_register

    cfg = _config(experiment, sets, run, dataset, arch)
    d = _guarded(do_register, cfg, also=(KeyError,))
    verdict = "[green]promoted to champion[/]" if d.promoted else "[yellow]kept as candidate[/]"
    out.print(f"{d.name} v{d.version}: {verdict}: {d.reason}")


@app.command()
def predict(
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m", help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model"
        ),
    ],
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="images .npy/.npz; texts .txt/.csv; series windows; rows; user,item pairs; "
            "GAN codes (see `assay predict --help` of the module doc)",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="write all predictions: .csv (a table) or .npy (arrays)")
    ] = None,
    samples: Annotated[int, typer.Option(help="GAN without --input: images to generate")] = 16,
    seed: Annotated[int, typer.Option(help="GAN without --input: seed of the random codes")] = 0,
    limit: Annotated[int, typer.Option(help="rows to print (all go to --output)")] = 20,
) -> None:
    """Predict with a registered model of any family: classes, forecasts, anomaly scores,
    reconstructions, generated images or ratings (the model's assay.json says which)."""
    import numpy as np

    from assay.paths import find_root
    from assay.predict import predict as do_predict

    p = _guarded(lambda: do_predict(model, input, find_root(), samples=samples, seed=seed))
    table = Table(
        *p.columns[:9], title=f"{model} ({p.objective})" + (f" on {input}" if input else "")
    )
    for row in p.rows[:limit]:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row[:9]))
    out.print(table)
    if len(p.rows) > limit:
        out.print(f"... {len(p.rows) - limit} more rows" + ("" if output else " (use --output)"))
    if output is None and p.images:
        output = Path(f"{p.objective}.npy")
    if output is None:
        return
    if output.suffix == ".npy":
        np.save(output, p.array)
        if p.images:
            from assay import plots

            png = output.with_suffix(".png")
            plots.image_grid([p.array[:64]], png, f"{model}: {p.objective}")
            out.print(f"wrote {len(p.array)} images to {output} and a grid to {png}")
        else:
            out.print(f"wrote {p.array.shape} array to {output}")
    else:
        import csv

        with open(output, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(p.columns)
            w.writerows(p.rows)
        out.print(f"wrote {len(p.rows)} predictions to {output}")


@app.command("models")
def list_models_cmd() -> None:
    """List the registered architectures and their presets."""
    from models import get_entry, list_models

    table = Table("name", "family", "class", "preset")
    for name in list_models():
        e = get_entry(name)
        table.add_row(name, e.family, e.module_cls.__name__, str(e.preset or "defaults"))
    out.print(table)


@app.command("config")
def show_config(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
) -> None:
    """Print the merged, validated configuration (what a command would run with)."""
    import yaml

    cfg = _config(experiment, sets, run, dataset, arch)
    sys.stdout.write(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


if __name__ == "__main__":
    app()
