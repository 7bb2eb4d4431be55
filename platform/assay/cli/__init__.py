"""The `assay` command: a thin layer over plain functions (config -> function -> result). Every
heavy import of a command is inside it, so `assay --help` and the light commands stay fast.

  common     the app, consoles, shared options and error handling
  pipeline   fetch, prepare, train, evaluate, register, predict, explain, models, config
  sweeps     assay sweep (run, resume, status)
  remote     assay cluster, jobs, submit, mlflow-server
  runs       assay runs gc
  lineage    assay lineage (a model back to its data, code and params; data forward)
  ui         assay ui (MLflow's UI and optuna-dashboard, together), assay serve (Ray Serve)
"""

import sys

from assay.cli import lineage, pipeline, remote, runs, sweeps, ui  # noqa: F401  (each registers its commands)
from assay.cli.common import TELEMETRY_OFF, app

# after the pipeline's commands and before the groups, in the order `assay --help` lists them
app.command()(lineage.lineage)
app.command()(lineage.reproduce)
app.command()(ui.ui)
app.command()(ui.serve)
# the command groups, in that order too
app.add_typer(sweeps.sweep_app, name="sweep")
app.add_typer(remote.cluster_app, name="cluster")
app.add_typer(remote.jobs_app, name="jobs")
app.add_typer(runs.runs_app, name="runs")


def main() -> None:
    """The `assay` command: the app, then `lifecycle.quick_exit` with its exit code (a command
    that loaded torch ends ~1 s sooner). A crash's traceback leaves the normal way."""
    try:
        app()
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    from assay import lifecycle

    lifecycle.quick_exit(code)


__all__ = ["TELEMETRY_OFF", "app", "main"]
