"""`assay sweep`: run, resume or inspect an Optuna study (see `assay.sweep`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from assay.cli.common import (
    Address,
    fail,
    guarded,
    out,
    short,
)

sweep_app = typer.Typer(
    help="Hyperparameter sweeps: an Optuna study (TPE by default, Hyperband pruning) whose "
    "trials train in parallel on Ray, each an MLflow child run of the sweep's run.\n\n"
    "  assay sweep -e experiments/sweeps/mnist-cnn.yaml --trials 40 --parallel 2\n\n"
    "  assay sweep -e experiments/sweeps/mnist-cnn.yaml --resume   (after a crash or Ctrl-C)\n\n"
    "  assay sweep status mnist-cnn",
    invoke_without_command=True,
)
Storage = Annotated[
    str | None,
    typer.Option(
        help="Optuna storage: sqlite:///PATH or postgresql://USER@HOST/DB "
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
            help="continue the study: trials a stopped driver left running are failed (once "
            "their heartbeats lapse) and their parameters run again"
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
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="register the best trial against the champion even if the two were scored on "
            "different data (without it, the champion stays and the best is kept as candidate)",
        ),
    ] = False,
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
    overrides += [("sweep.storage", storage)] if storage else []
    if address:
        os.environ["RAY_ADDRESS"] = address
    s = guarded(
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
    r = guarded(
        lambda: sw.run_sweep(s, resume=resume, fresh=fresh, console=out, force=force),
        also=(sw.SweepError,),
    )
    if r.error:  # ran, but no trial completed: a failure for the shell and DVC alike
        fail(f"sweep {r.study}: {r.error}\n  MLflow parent run {r.parent_run_id}: FAILED", 1)
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
    rows = guarded(lambda: sw.status(study, url), also=(sw.SweepError,))
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
            *(short(r.get(p)) for p in params),
        )
    out.print(table)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    out.print(", ".join(f"{v} {k}" for k, v in counts.items()) or "no trials yet")
