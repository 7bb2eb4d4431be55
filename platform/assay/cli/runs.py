"""`assay runs`: runs and scratch a killed process left behind (see `assay.orphans`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from assay.cli.common import (
    load,
    out,
)

runs_app = typer.Typer(
    help="MLflow runs and scratch folders a killed process left behind.\n\n"
    "A process killed outright (kill -9, the OOM killer) cannot end its MLflow run nor remove "
    "its scratch folder (outputs/KEY/.model.PID-XXXX). The next run of the same key cleans up "
    "after it; `assay runs gc` does it for the whole store and project.",
    no_args_is_help=True,
)


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

    cfg = load()
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
