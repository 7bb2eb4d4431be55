"""The `assay` command: a thin layer over plain functions (config -> function -> result)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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


def _config(experiment=None, sets=None, run=None, dataset=None, arch=None, *, require=()):
    """The merged config a command runs with. `require`: the sections it reads, which params.yaml
    (or the experiment file) must have: an emptied params.yaml is an error, not the defaults."""
    from assay.config import ConfigError, load_config, with_overrides

    overrides = list(sets or [])
    overrides += [f"train.dataset={dataset}"] if dataset else []
    overrides += [f"train.arch={arch}"] if arch else []
    try:
        cfg = load_config(experiment, [], require=(*require, *(["runs"] if run else [])))
        if run:
            cfg = cfg.for_run(run)
        if overrides:
            cfg = with_overrides(cfg, overrides)
        return cfg
    except ConfigError as e:
        _fail(str(e))


def _guarded(fn, *args, also: tuple[type[Exception], ...] = ()):
    """Call `fn`; errors that are the user's to fix become a message and exit code 2, no traceback.
    Anything else propagates with its traceback: that is a bug or a crash worth seeing whole."""
    from assay.artifacts import ArtifactMismatch
    from assay.config import ConfigError
    from assay.models.registry import UnknownModelError
    from assay.paths import DataError
    from assay.predict import PredictError

    user_errors = (ConfigError, PredictError, UnknownModelError, FileNotFoundError)
    try:
        return fn(*args)
    except (*user_errors, ArtifactMismatch, DataError, *also) as e:
        _fail(str(e))


@app.command()
def fetch(dataset: Annotated[str, typer.Argument(help=f"one of: {DATASET_HELP}")]) -> None:
    """Bring a data set's raw file into data/raw/DATASET (checked against its sha256)."""
    from assay.data import fetch as do_fetch
    from assay.paths import find_root

    cfg = _config(require=("fetch",))
    path = _guarded(do_fetch, dataset, cfg.fetch, find_root(), also=(ValueError,))
    out.print(f"fetched {dataset} -> {path}")


@app.command()
def prepare(dataset: Annotated[str, typer.Argument(help=f"one of: {DATASET_HELP}")]) -> None:
    """Write fixed-seed train/val/test splits and meta.json to data/DATASET."""
    from assay.data import prepare as do_prepare
    from assay.paths import find_root

    cfg = _config(require=("prepare",))
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
    refit: Refit = None,
) -> None:
    """Train one model, logged to MLflow and W&B at once.

    With --workers N it runs on Ray Train: DDP over N workers, a checkpoint every epoch, and
    worker crashes recovered from it (train.max_failures); still one MLflow and one W&B run.
    With --refit, the epochs early stopping chose are trained again, from scratch, on train +
    val (in this process), and that model is the run's.
    """
    from assay.training import train as do_train

    ray_sets = _ray_sets(workers, gpus_per_worker, cpus_per_worker, address)
    if refit is not None:
        ray_sets.append(f"train.refit={str(refit).lower()}")
    cfg = _config(experiment, [*(sets or []), *ray_sets], run, dataset, arch, require=("train",))
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
    from assay.evaluation import evaluate as do_evaluate

    cfg = _config(experiment, sets, run, dataset, arch, require=("train", "evaluate"))
    result = _guarded(do_evaluate, cfg)
    out.print(f"{result.key}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))


@app.command()
def register(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    dataset: Dataset = None,
    arch: Arch = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="compare with the champion even if the two were scored on different data "
            "(without it, the champion stays and the new version is kept as candidate)",
        ),
    ] = False,
) -> None:
    """Register a trained model; move `champion` to it only if it beats the current one on the
    same test data."""
    from assay.registry import register as do_register

    cfg = _config(experiment, sets, run, dataset, arch, require=("train", "register"))
    d = _guarded(do_register, cfg, None, force, also=(KeyError,))
    verdict = "[green]promoted to champion[/]" if d.promoted else "[yellow]kept as candidate[/]"
    out.print(f"{d.name} v{d.version}: {verdict}: {d.reason}", soft_wrap=True)


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
    label: Annotated[
        int | None,
        typer.Option(help="conditional GAN without --input: the class to draw (default: each)"),
    ] = None,
    limit: Annotated[int, typer.Option(help="rows to print (all go to --output)")] = 20,
) -> None:
    """Predict with a registered model of any family: classes, forecasts, anomaly scores,
    reconstructions, generated images or ratings (the model's assay.json says which)."""
    import numpy as np

    from assay.paths import find_root
    from assay.predict import predict as do_predict

    p = _guarded(
        lambda: do_predict(model, input, find_root(), samples=samples, seed=seed, label=label)
    )
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
    from assay.models import get_entry, list_models

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


# ------------------------------------------------------------------------------------- sweeps
sweep_app = typer.Typer(
    help="Hyperparameter sweeps: an Optuna study (TPE by default, Hyperband pruning) whose "
    "trials train in parallel on Ray, each an MLflow child run of the sweep's run.\n\n"
    "  assay sweep -e experiments/sweeps/mnist-cnn.yaml --trials 40 --parallel 2\n\n"
    "  assay sweep -e experiments/sweeps/mnist-cnn.yaml --resume   (after a crash or Ctrl-C)\n\n"
    "  assay sweep status mnist-cnn",
    invoke_without_command=True,
)
app.add_typer(sweep_app, name="sweep")
Storage = Annotated[
    str | None,
    typer.Option(
        help="Optuna storage: sqlite:///PATH, postgresql://USER@HOST/DB or journal:PATH "
        "(sweep.storage; default sqlite:///optuna.db in the project)"
    ),
]


@sweep_app.callback()
def sweep(
    ctx: typer.Context,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment", "-e", help="the sweep file: experiments/sweeps/NAME.yaml (or a path)"
        ),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="trials to finish, complete or pruned (sweep.trials)", min=1)
    ] = None,
    parallel: Annotated[
        int | None, typer.Option(help="trials at once, one CPU each (sweep.parallel)", min=1)
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds; no trial starts after (sweep.timeout)", min=1)
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="continue the study: trials a stopped driver left running are failed and "
            "their parameters run again"
        ),
    ] = False,
    fresh: Annotated[
        bool,
        typer.Option(
            help="start the study over: its earlier trials are deleted from the storage (its "
            "MLflow runs stay); what `dvc repro` runs"
        ),
    ] = False,
    storage: Storage = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override a sweep file key, e.g. sweep.study=lr-2"),
    ] = None,
    address: Address = None,
) -> None:
    """Run a sweep (or `assay sweep status STUDY`)."""
    if ctx.invoked_subcommand is not None:
        return
    if experiment is None:
        out.print(ctx.get_help())
        raise typer.Exit(2)
    from assay import sweep as sw

    overrides = list(sets or [])
    overrides += [f"sweep.storage={storage}"] if storage else []
    if address:
        os.environ["RAY_ADDRESS"] = address
    s = _guarded(
        lambda: sw.load_sweep(
            experiment, overrides, trials=trials, parallel=parallel, timeout=timeout
        )
    )
    c = s.cfg
    budget = " and ".join(
        x
        for x in (
            f"{c.trials} trials" if c.trials else "",
            f"{c.timeout:.0f} s" if c.timeout else "",
        )
        if x
    )
    out.print(
        f"sweep {s.study}: {c.objective.metric} ({c.objective.direction}) over "
        f"{', '.join(c.space)}; {c.sampler.name} sampler, {c.pruner.name} pruner, {budget}, "
        f"{c.parallel} at a time; storage {sw.safe_url(s.storage)}",
        highlight=False,
    )
    r = _guarded(
        lambda: sw.run_sweep(s, resume=resume, fresh=fresh, console=out), also=(sw.SweepError,)
    )
    if r.error:  # ran, but no trial completed: a failure for the shell and DVC alike
        _fail(f"sweep {r.study}: {r.error}\n  MLflow parent run {r.parent_run_id}: FAILED", 1)
    counts = ", ".join(f"{v} {k}" for k, v in r.counts.items() if v)
    best = (
        f"best trial {r.best_number}: {c.objective.metric} {r.best_value:.4f}, "
        f"{sw.fmt_params(r.best_params)}"
        if r.best_number is not None
        else "no trial completed"
    )
    out.print(
        f"sweep {r.study} done in {r.seconds:.0f} s ({r.epochs} epochs): {counts}; {best}"
        + f"\n  {s.out / 'best_params.yaml'}; MLflow parent run {r.parent_run_id}"
        f"\n  assay sweep status {r.study}" + (f" --storage {storage}" if storage else ""),
        highlight=False,
    )


@sweep_app.command("status")
def sweep_status(
    study: Annotated[str, typer.Argument(help="the study's name (sweep.study)")],
    storage: Storage = None,
) -> None:
    """A table of a study's trials: state, value, epochs, time, parameters."""
    from assay import sweep as sw
    from assay.paths import find_root

    url = sw.storage_url(storage, find_root())
    rows = _guarded(lambda: sw.status(study, url), also=(sw.SweepError,))
    params = sorted({k for r in rows for k in r if k.startswith("params.")})
    table = Table(
        "trial",
        "state",
        "value",
        "epochs",
        "pruned at",
        "seconds",
        *(p.removeprefix("params.").removeprefix("train.").removeprefix("models.") for p in params),
        title=f"study {study} ({sw.safe_url(url)})",
    )
    colour = {"complete": "green", "pruned": "yellow", "fail": "red", "running": "cyan"}
    for r in rows:
        table.add_row(
            str(r["number"]),
            f"[{colour.get(r['state'], 'white')}]{r['state']}[/]",
            "" if r["value"] is None else f"{r['value']:.4f}",
            str(r["epochs"]),
            "" if r["pruned_at_epoch"] is None else str(r["pruned_at_epoch"]),
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
            *(_short(r.get(p)) for p in params),
        )
    out.print(table)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    out.print(", ".join(f"{v} {k}" for k, v in counts.items()) or "no trials yet")


def _short(v) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- Ray cluster, jobs
cluster_app = typer.Typer(
    help="A local Ray head for users without a cluster (127.0.0.1, free ports, dashboard on). "
    "With a cluster of your own, `ray start --head` / `ray start --address` instead.",
    no_args_is_help=True,
)
jobs_app = typer.Typer(help="Ray Jobs on the cluster: list, logs, stop.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(jobs_app, name="jobs")
JobAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="the cluster's dashboard, http://HEAD:8265 ($RAY_ADDRESS); default: `cluster up`'s",
    ),
]


def _cluster_call(fn, *args):
    from assay.cluster import ClusterError

    return _guarded(fn, *args, also=(ClusterError, ConnectionError))


@cluster_app.command("up")
def cluster_up(
    num_cpus: Annotated[int | None, typer.Option(help="CPUs to offer (default: all)")] = None,
    host: Annotated[
        str,
        typer.Option(
            help="where the head listens. 127.0.0.1: this machine only (its own users too). "
            "Another address, or 0.0.0.0 (every interface), lets other nodes join, and exposes "
            "the GCS, raylet, object manager, agents and workers on all interfaces and the "
            "dashboard (the Jobs API, which runs any command it is sent) on HOST, to anyone on "
            "that network who has the cluster's token (~/.ray/auth_token)"
        ),
    ] = "127.0.0.1",
) -> None:
    """Start a local Ray head in the background; prints its addresses."""
    from assay import cluster
    from assay.paths import find_root

    with out.status(f"starting a Ray head on {host} ..."):
        head = _cluster_call(lambda: cluster.up(find_root(), num_cpus, host=host))
    out.print(
        f"Ray head up (pid {head.pid})\n  address:   {head.address}   "
        f"(assay train --workers N --address {head.address})\n  dashboard: {head.dashboard}   "
        f"(assay submit, ray job submit --address {head.dashboard})\n  log:       {head.log}"
    )


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the head `assay cluster up` started (by its process id)."""
    from assay import cluster
    from assay.paths import find_root

    head = _cluster_call(cluster.down, find_root())
    out.print(f"stopped the Ray head (pid {head.pid})" if head else "no Ray head of ours is up")


@cluster_app.command("status")
def cluster_status() -> None:
    """Is our head up; its addresses, resources and jobs."""
    from assay import cluster
    from assay.paths import find_root

    head = cluster.Head.load(find_root())
    if head is None:
        _fail("no Ray head of ours is up: `assay cluster up` starts one", code=1)
    jobs = _cluster_call(lambda: cluster.client(head.dashboard).list_jobs())
    out.print(
        f"Ray head up (pid {head.pid}): address {head.address}, dashboard {head.dashboard}, "
        f"{len(jobs)} job(s)"
    )


@app.command()
def submit(
    experiment: Experiment = None,
    sets: Sets = None,
    run: Run = None,
    workers: Workers = None,
    gpus_per_worker: GpusPerWorker = None,
    cpus_per_worker: CpusPerWorker = None,
    address: JobAddress = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream the logs; exit with the job's result")
    ] = False,
    sweep_file: Annotated[
        str | None,
        typer.Option(
            "--sweep",
            help="submit a sweep instead (experiments/sweeps/NAME.yaml): `assay sweep -e FILE`; "
            "--set then overrides the sweep file's keys",
        ),
    ] = None,
) -> None:
    """Submit a training (or, with --sweep, a sweep) to a Ray cluster as a Ray Job.

    The job ships params.yaml, experiments/, the prepared data split and the assay package
    (its architectures, assay.models, inside), and logs to the MLflow store you see
    ($MLFLOW_TRACKING_URI: an `assay mlflow-server` for a multi-node cluster).
    """
    from assay import cluster
    from assay.paths import find_root

    if sweep_file:
        from assay import sweep as sw

        s = _guarded(lambda: sw.load_sweep(sweep_file, list(sets or [])))  # checked here first
        rel = os.path.relpath(s.path, find_root())
        args = ["-e", rel, *[a for x in (sets or []) for a in ("--set", x)]]
        job_id, dashboard = _cluster_call(
            lambda: cluster.submit(
                find_root(),
                s.base,
                args,
                address,
                None,
                command="sweep",
                # only the default: a storage the sweep file or --set names travels in `args`
                storage=None if s.cfg.storage else s.storage,
            )
        )
        out.print(f"submitted sweep {s.study} as Ray job {job_id} to {dashboard}")
        _follow_or_hint(follow, dashboard, job_id)
        return
    ray_sets = _ray_sets(workers, gpus_per_worker, cpus_per_worker, None)
    sets = [*(sets or []), *ray_sets]
    # bad input fails here, before anything is sent
    cfg = _config(experiment, sets, run, require=("train",))
    args = (["-e", experiment] if experiment else []) + (["--run", run] if run else [])
    args += [a for s in sets for a in ("--set", s)]
    job_id, dashboard = _cluster_call(
        lambda: cluster.submit(find_root(), cfg, args, address, experiment)
    )
    out.print(f"submitted {cfg.train.key} as Ray job {job_id} to {dashboard}")
    _follow_or_hint(follow, dashboard, job_id)


def _follow_or_hint(follow: bool, dashboard: str, job_id: str) -> None:
    from assay import cluster

    if not follow:
        out.print(f"follow it: assay jobs logs {job_id} --follow")
        return
    status = _cluster_call(cluster.follow, dashboard, job_id)
    out.print(f"job {job_id}: {status}")
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@jobs_app.command("list")
def jobs_list(address: JobAddress = None) -> None:
    """The cluster's jobs, newest first."""
    from assay import cluster
    from assay.paths import find_root

    dashboard = _cluster_call(cluster.dashboard_address, find_root(), address)
    jobs = _cluster_call(lambda: cluster.client(dashboard).list_jobs())
    table = Table("job", "status", "run", "started", "entrypoint")
    for j in sorted(jobs, key=lambda j: j.start_time or 0, reverse=True):
        started = time.strftime("%H:%M:%S", time.localtime((j.start_time or 0) / 1000))
        table.add_row(
            j.submission_id or j.job_id or "",
            str(j.status.value),
            (j.metadata or {}).get("assay.key", ""),
            started,
            j.entrypoint[-60:],
        )
    out.print(table)


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="the id `assay submit` printed")],
    address: JobAddress = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until it ends")] = False,
) -> None:
    """A job's logs (all of them so far, or streamed with --follow)."""
    from assay import cluster
    from assay.paths import find_root

    dashboard = _cluster_call(cluster.dashboard_address, find_root(), address)
    if follow:
        status = _cluster_call(cluster.follow, dashboard, job_id)
        out.print(f"job {job_id}: {status}")
        raise typer.Exit(0 if status == "SUCCEEDED" else 1)
    sys.stdout.write(_cluster_call(lambda: cluster.client(dashboard).get_job_logs(job_id)))


@jobs_app.command("stop")
def jobs_stop(
    job_id: Annotated[str, typer.Argument(help="the id `assay submit` printed")],
    address: JobAddress = None,
) -> None:
    """Stop a running job."""
    from assay import cluster
    from assay.paths import find_root

    dashboard = _cluster_call(cluster.dashboard_address, find_root(), address)
    stopped = _cluster_call(lambda: cluster.client(dashboard).stop_job(job_id))
    out.print(f"job {job_id}: " + ("stopping" if stopped else "was not running"))


@app.command("mlflow-server")
def mlflow_server(
    port: Annotated[int, typer.Option(help="0: a free port")] = 0,
    backend_store_uri: Annotated[
        str | None,
        typer.Option(
            help="runs and registry: default the project's sqlite:///mlflow.db; for many "
            "machines postgresql://user@host/db"
        ),
    ] = None,
    artifacts: Annotated[
        Path | None, typer.Option(help="where the server keeps artifacts (default mlartifacts/)")
    ] = None,
    host: Annotated[str, typer.Option(help="bind address; 0.0.0.0 exposes it")] = "127.0.0.1",
) -> None:
    """Run an MLflow tracking server for jobs on a cluster (foreground; Ctrl-C stops it).

    Point jobs and your shell at it: export MLFLOW_TRACKING_URI=http://HOST:PORT.
    """
    import subprocess

    from assay import cluster
    from assay.paths import find_root

    root = find_root()
    port = port or cluster.free_port()
    backend = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    store = artifacts or root / "mlartifacts"
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow) if mlflow.exists() else "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(store),
        "--workers",
        "1",
    ]
    out.print(
        f"MLflow server on http://{host}:{port} (store {backend}); "
        f"export MLFLOW_TRACKING_URI=http://{host}:{port}",
        highlight=False,
    )
    sys.stdout.flush()
    from assay import lifecycle

    # Its own process group, so that stopping it reaches uvicorn and the job consumers too;
    # it gets SIGTERM should we be killed outright.
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,
        preexec_fn=lifecycle.die_with_parent,
    )
    code = None
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP or our parent's death
        code = 0
    finally:
        lifecycle.stop_group(proc)
    raise typer.Exit(code)


# ---------------------------------------------------------------------------- runs and leftovers
runs_app = typer.Typer(
    help="MLflow runs and scratch folders a killed process left behind.\n\n"
    "A process killed outright (kill -9, the OOM killer) cannot end its MLflow run nor remove "
    "its scratch folder (outputs/KEY/.model.PID-XXXX). The next run of the same key cleans up "
    "after it; `assay runs gc` does it for the whole store and project.",
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")


@runs_app.command("gc")
def runs_gc(
    dry_run: Annotated[bool, typer.Option(help="only report what would be done")] = False,
    min_age: Annotated[
        float,
        typer.Option(
            help="minutes a scratch folder no run names must be old before it is removed",
            min=0,
        ),
    ] = 10,
) -> None:
    """Close runs and remove scratch folders whose process is gone.

    Every RUNNING run whose process died on this machine is ended KILLED, with a note saying
    so, and the scratch folders it named are removed; then the scratch folders under outputs/
    and data/ whose process is gone (or not recorded) and older than --min-age minutes. Runs
    owned on another machine are listed and left alone: their process cannot be checked from
    here.
    """
    from assay import orphans, tracking
    from assay.paths import find_root

    cfg = _config()
    root = find_root()
    client = tracking.open_store(tracking.tracking_uri(cfg.tracking, root))
    found = orphans.gc(client, root, min_age * 60, dry_run)
    table = Table(title="assay runs gc")
    for column in ("kind", "run / path", "owner (pid@host)", "action"):
        table.add_column(column, overflow="fold")
    for f in found:
        colour = "yellow" if f.action.startswith("left") else "green"
        table.add_row(f.kind, f.what, f.owner, f"[{colour}]{f.action}[/]")
    out.print(table)
    done = [f for f in found if not f.action.startswith("left")]
    out.print(
        f"{len(done)} {'to clean up (dry run: nothing changed)' if dry_run else 'cleaned up'}, "
        f"{len(found) - len(done)} left",
        highlight=False,
    )


if __name__ == "__main__":
    app()
