"""Ray clusters and jobs (`assay cluster`, `assay jobs`, `assay submit`) and the shared MLflow
server (`assay mlflow-server`)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from assay.cli.common import (
    CpusPerWorker,
    Experiment,
    GpusPerWorker,
    Run,
    Sets,
    Workers,
    app,
    as_flags,
    fail,
    guarded,
    load,
    out,
    ray_sets,
)

cluster_app = typer.Typer(
    help="A local Ray head for users without a cluster (127.0.0.1, free ports, dashboard on). "
    "With a cluster of your own, `ray start --head` / `ray start --address` instead.",
    no_args_is_help=True,
)
jobs_app = typer.Typer(help="Ray Jobs on the cluster: list, logs, stop.", no_args_is_help=True)
JobAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="the cluster's dashboard, http://HEAD:8265 ($RAY_ADDRESS); default: `cluster up`'s",
    ),
]


def _cluster_call(fn, *args):
    from assay.cluster import ClusterError

    return guarded(fn, *args, also=(ClusterError, ConnectionError))


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


@cluster_app.command("add-node")
def cluster_add_node(
    num_cpus: Annotated[int, typer.Option(min=1, help="CPUs the node offers")] = 1,
) -> None:
    """Add a Ray node on this machine to the head `cluster up` started: its own raylet, object
    store and workers on 127.0.0.1, offering NUM_CPUS and a resource named after it (node-2,
    ...). Run it again for more nodes, or to replace one that was lost; `cluster down` stops
    them with the head. (A second machine joins with `ray start --address HEAD`, against a head
    started with --host.)"""
    from assay import cluster, nodes
    from assay.paths import find_root

    root = find_root()
    head = cluster.Head.load(root)
    if head is None:
        fail("no Ray head of ours is up: `assay cluster up` starts one", code=1)
    with out.status("starting a Ray node ..."):
        node = guarded(nodes.add_node, root, head.address, num_cpus)
    out.print(f"Ray node {node.name} up (pid {node.pid}, {node.num_cpus} CPU); log {node.log}")


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
        fail("no Ray head of ours is up: `assay cluster up` starts one", code=1)
    jobs = _cluster_call(lambda: cluster.client(head.dashboard).list_jobs())
    out.print(
        f"Ray head up (pid {head.pid}): address {head.address}, dashboard {head.dashboard}, "
        f"{len(jobs)} job(s)"
    )
    from assay import nodes

    for n in nodes.load(find_root()):
        out.print(f"  node {n.name} (pid {n.pid}, {n.num_cpus} CPU), log {n.log}")


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

        s = guarded(lambda: sw.load_sweep(sweep_file, list(sets or [])))  # checked here first
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
    sets = [*(sets or []), *ray_sets(workers, gpus_per_worker, cpus_per_worker, None)]
    # bad input fails here, before anything is sent
    cfg = load(experiment, sets, run, require=("train",))
    args = (["-e", experiment] if experiment else []) + (["--run", run] if run else [])
    args += as_flags(sets)
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
    from assay import lifecycle, servers
    from assay.paths import find_root

    root = find_root()
    port = port or servers.free_port()
    backend = backend_store_uri or f"sqlite:///{root / 'mlflow.db'}"
    cmd = servers.mlflow_cmd(backend, host, port, artifacts or root / "mlartifacts")
    out.print(
        f"MLflow server on http://{host}:{port} (store {backend}); "
        f"export MLFLOW_TRACKING_URI=http://{host}:{port}",
        highlight=False,
        soft_wrap=True,  # one line, whatever the terminal's width: a script may read it
    )
    sys.stdout.flush()
    proc = servers.start(cmd)  # its own process group: stopping it reaches all its workers
    code = None
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM, SIGHUP or our parent's death
        code = 0
    finally:
        lifecycle.stop_group(proc)
    raise typer.Exit(code)
