"""`assay ui`: MLflow's UI and optuna-dashboard on the project's stores, together."""

from __future__ import annotations

import sys
from typing import Annotated
from urllib.parse import urlsplit

import typer

from assay.cli.common import fail, guarded, load, out


def ui(
    mlflow_port: Annotated[
        int | None,
        typer.Option(help="MLflow UI's port; default tracking.ui's (5000); 0: a free one"),
    ] = None,
    dashboard_port: Annotated[
        int, typer.Option(help="optuna-dashboard's port; 0: a free one")
    ] = 8080,
    storage: Annotated[
        str | None,
        typer.Option(help="the Optuna storage to show; default the sweeps' sqlite:///optuna.db"),
    ] = None,
) -> None:
    """Start MLflow's UI and optuna-dashboard on 127.0.0.1 and print their addresses.

    MLflow's UI shows every run, its metrics, plots and models, and the registry's aliases
    (champion, candidate); optuna-dashboard shows the sweeps' studies, each trial linked to its
    MLflow run. Both read the project's stores (tracking.uri, else mlflow.db; the sweeps'
    optuna.db). With a tracking server (tracking.uri or $MLFLOW_TRACKING_URI is http://...),
    only optuna-dashboard starts: the server is the UI. Ctrl-C stops both.
    """
    from assay import servers, tracking
    from assay.paths import find_root
    from assay.sweep.load import storage_url

    cfg = load(require=["tracking"])
    root = find_root()
    host = "127.0.0.1"
    store = cfg.tracking.store_uri(root)
    ui_url = cfg.tracking.ui_url(root)
    client = tracking.ensure_store(store)  # a new project's store, and its experiment, exist
    experiment = tracking.experiment_id(client, cfg.tracking.experiment, root, store)
    wanted: list[tuple[str, list[str], str]] = []
    if not store.startswith(("http://", "https://")):
        default = 443 if ui_url.startswith("https") else 80
        port = (urlsplit(ui_url).port or default) if mlflow_port is None else mlflow_port
        port = port or servers.free_port(host)
        if not servers.port_free(host, port):
            fail(
                f"port {port} (tracking.ui: {cfg.tracking.ui}) is taken, by another MLflow UI?"
                " Stop it, or pick another port: `assay ui --mlflow-port 0` (a free one; the "
                "trials' links in optuna-dashboard point at tracking.ui: set it to match)"
            )
        url = f"http://{host}:{port}"
        wanted.append(
            ("MLflow UI", servers.mlflow_cmd(store, host, port, root / "mlartifacts"), url)
        )
    else:
        page = tracking.ui_page(ui_url, experiment)
        out.print(
            f"MLflow:           {page} (the tracking server)", highlight=False, soft_wrap=True
        )
    dport = dashboard_port or servers.free_port(host)
    if not servers.port_free(host, dport):
        fail(
            f"port {dport} is taken, by another optuna-dashboard? `--dashboard-port 0`: a free one"
        )
    optuna_storage = storage or storage_url(None, root)
    if optuna_storage.startswith("sqlite:///"):
        from assay.sweep.study import open_storage

        # optuna-dashboard creates no tables: a project with no sweep yet has no optuna.db
        guarded(open_storage, optuna_storage)
    wanted.append(
        (
            "optuna-dashboard",
            servers.dashboard_cmd(optuna_storage, host, dport),
            f"http://{host}:{dport}",
        )
    )
    started: list[servers.Server] = []
    try:
        for name, cmd, url in wanted:
            started.append(servers.Server(name, url, servers.start(cmd)))
        guarded(servers.wait_ready, started)
        for s in started:
            url = s.url
            if s.name == "MLflow UI":  # the experiment's runs, in the model-training view
                url = tracking.ui_page(s.url, experiment)
            out.print(f"{s.name + ':':17} {url}", highlight=False, soft_wrap=True)
        out.print(
            "Ctrl-C stops both." if len(started) > 1 else "Ctrl-C stops it.",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()
        code = servers.serve(started)  # stops them all when it returns
    finally:
        from assay import lifecycle

        for s in started:
            if s.proc.poll() is None:
                lifecycle.stop_group(s.proc)
    raise typer.Exit(code)


def serve(
    model: Annotated[
        str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model")
    ],
    replicas: Annotated[int, typer.Option(min=1, max=64, help="Ray Serve replicas")] = 1,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="HTTP port on 127.0.0.1; 0: a free one")
    ] = 8000,
    max_batch_size: Annotated[
        int, typer.Option(min=1, max=4096, help="requests one forward pass takes at most")
    ] = 32,
    batch_wait_ms: Annotated[
        float,
        typer.Option(min=0, max=1000, help="how long a batch waits for more requests (ms)"),
    ] = 5.0,
) -> None:
    """Serve a logged model on Ray Serve: N replicas, each batching the requests that arrive
    within --batch-wait-ms into one forward pass.

    It speaks MLflow's scoring protocol (POST /invocations with {"inputs": ...},
    {"instances": ...} or {"dataframe_split": ...}; GET /ping), answers exactly as `assay
    predict` and `mlflow models serve`, and refuses out-of-contract input with HTTP 400 and the
    same message. Bound to 127.0.0.1 on a local Ray, or on the head `assay cluster up` runs on
    this machine (ray.address). Ctrl-C stops it and everything it started.
    """
    from assay import servers
    from assay.paths import find_root
    from assay.serving import ServeOptions
    from assay.serving import serve as do_serve

    cfg = load(require=["tracking", "ray"])
    port = port or servers.free_port()
    if not servers.port_free("127.0.0.1", port):
        fail(f"port {port} is taken: pick another (`--port 0`: a free one)")
    opts = ServeOptions(replicas, port, max_batch_size, batch_wait_ms)
    try:
        guarded(do_serve, cfg, find_root(), model, opts)
    except KeyboardInterrupt:
        out.print("stopped", highlight=False)
