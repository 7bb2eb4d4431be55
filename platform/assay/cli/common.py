"""What every `assay` command shares: the app, its consoles, the common options, and turning a
user's error into a message (exit code 2) instead of a traceback."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

from assay import datasets  # the registry alone: no torch

# Telemetry off unless the user turned it on (see PITFALLS). MLflow reads its switch once, at
# `import mlflow`, so the `assay` command sets these before any command imports anything heavy
# (every import of a command is inside it); importing `assay` as a library changes nothing.
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}


app = typer.Typer(
    help="Assay: versioned data, Lightning models, MLflow + W&B tracking and a gated registry.\n\n"
    "The pipeline is `dvc repro`; these commands are its stages and the tools around it.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
out = Console()
# soft_wrap: an error keeps its paths and commands whole (rich would break them at the width of a
# terminal it cannot see: 80 columns in CI or under dvc), so they can be copied and grepped
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _start() -> None:
    # Every command: SIGTERM/SIGHUP stop it cleanly (runs end KILLED, no scratch left), and it
    # stops when its parent (`dvc repro`) dies. See assay.lifecycle.
    for var, value in TELEMETRY_OFF.items():
        os.environ.setdefault(var, value)
    from assay import lifecycle

    lifecycle.install()


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
DATASET_HELP = datasets.help_line()
Dataset = Annotated[
    str | None, typer.Option(help=f"shortcut for --set train.dataset=...: {DATASET_HELP}")
]
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


Refit = Annotated[
    bool | None,
    typer.Option(
        "--refit/--no-refit",
        help="after early stopping picks the best epoch count, retrain a fresh model on "
        "train + val for that many epochs; it is the model logged, evaluated and registered "
        "(train.refit)",
    ),
]


# The Ray flags' settings, and the flag each is on a job's command line.
RAY_FLAGS = {
    "train.workers": "--workers",
    "train.gpus_per_worker": "--gpus-per-worker",
    "train.cpus_per_worker": "--cpus-per-worker",
    "ray.address": "--address",
}


def ray_sets(workers, gpus, cpus, address) -> list[tuple[str, object]]:
    """The Ray flags given, as typed overrides: applied as they are, never parsed again."""
    values = dict(zip(RAY_FLAGS, (workers, gpus, cpus, address), strict=True))
    return [(k, v) for k, v in values.items() if v is not None]


def as_flags(overrides: list) -> list[str]:
    """A command line that gives the same overrides: `--set` text as it was, a typed Ray
    override as its own flag (for a job's `assay train`)."""
    argv: list[str] = []
    for o in overrides:
        argv += [RAY_FLAGS[o[0]], str(o[1])] if isinstance(o, tuple) else ["--set", o]
    return argv


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def load(experiment=None, sets=None, run=None, dataset=None, arch=None, *, require=()):
    """The merged config a command runs with. `require`: the sections it reads, which params.yaml
    (or the experiment file) must have: an emptied params.yaml is an error, not the defaults."""
    from assay.config import ConfigError, load_config, with_overrides

    overrides = list(sets or [])
    overrides += [("train.dataset", dataset)] if dataset else []
    overrides += [("train.arch", arch)] if arch else []
    try:
        cfg = load_config(experiment, [], require=(*require, *(["runs"] if run else [])))
        if run:
            cfg = cfg.for_run(run)
        if overrides:
            cfg = with_overrides(cfg, overrides)
        return cfg
    except ConfigError as e:
        fail(str(e))


def guarded(fn, *args, also: tuple[type[Exception], ...] = ()):
    """Call `fn`; errors that are the user's to fix become a message and exit code 2, no traceback.
    Anything else propagates with its traceback: that is a bug or a crash worth seeing whole."""
    from assay.errors import UserError  # each module's own errors subclass it: none loads here

    try:
        return fn(*args)
    except (UserError, FileNotFoundError, *also) as e:
        fail(str(e))


def short(v) -> str:
    """A table cell: floats to 4 significant digits, None empty."""
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
