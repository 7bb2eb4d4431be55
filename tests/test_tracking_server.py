"""The shared tracking server of a multi-machine set-up, for real: `assay mlflow-server` on the
machine's PostgreSQL (new databases per test, dropped after) with the artifacts it serves itself,
bound to 127.0.0.1. Training, the champion gate and a sweep whose Optuna study is on the same
PostgreSQL all go through it, and its REST API shows the runs, their artifacts and the champion."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest

from assay.evaluation import evaluate
from assay.registry import register
from assay.sweep import SweepError, load_sweep, run_sweep
from assay.training import train
from tests.conftest import free_port, serving, tiny_config
from tests.sweeps_support import Lines, write_sweep

SERVER = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_databases():
    """Two new, empty databases on the machine's PostgreSQL, MLflow's and Optuna's (one database
    cannot hold both: each keeps its schema version in its own `alembic_version` table); dropped,
    connections and all, after."""
    import sqlalchemy

    admin = sqlalchemy.create_engine(f"{SERVER}/postgres", isolation_level="AUTOCOMMIT")
    names = [f"assay_{what}_{uuid.uuid4().hex[:8]}" for what in ("mlflow", "optuna")]
    try:
        admin.connect().close()
    except sqlalchemy.exc.OperationalError as e:  # no server to talk to (a real error is raised)
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {SERVER}: {e}")
        pytest.skip(f"no PostgreSQL at {SERVER}")
    made = []
    try:
        with admin.connect() as c:
            for name in names:
                c.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
                made.append(name)
        yield [f"{SERVER}/{name}" for name in names]
    finally:
        with admin.connect() as c:
            for name in made:
                c.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _get(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture
def tracking_server(project, pg_databases, tmp_path):
    """`assay mlflow-server --backend-store-uri postgresql://...` in the project, on a free port
    of 127.0.0.1 (~60 schema migrations on a new database first); yields its http:// address."""
    port = free_port()
    assay = str(Path(sys.executable).with_name("assay"))
    cmd = [assay, "mlflow-server", "--port", str(port), "--backend-store-uri", pg_databases[0]]
    cmd += ["--artifacts", str(tmp_path / "served-artifacts")]
    address = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with serving(cmd, project, f"{address}/health", log, wait=180):
        assert f"export MLFLOW_TRACKING_URI={address}" in log.read_text()
        yield address


@pytest.mark.slow
@pytest.mark.bare  # no project store: everything must go to the server
def test_training_the_gate_and_a_sweep_go_through_the_server_on_postgresql(
    project, tracking_server, pg_databases, monkeypatch, no_ray_left
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    api = f"{tracking_server}/api/2.0/mlflow"

    # two trainings through the server: the better second one takes the champion alias
    weak = tiny_config(project, wandb="disabled", max_epochs=1, lr=1e-4, optimizer="sgd")
    strong = tiny_config(project, wandb="disabled", max_epochs=8, lr=0.01)
    decisions, run_ids = [], []
    for cfg in (weak, strong):
        run_ids.append(train(cfg, project).run_id)
        evaluate(cfg, project)
        decisions.append(register(cfg, project))
    assert [d.promoted for d in decisions] == [True, True], [d.reason for d in decisions]
    assert not (project / "mlflow.db").exists() and not (project / "mlruns").exists()

    # what anyone on another machine sees through the REST API
    exp = _get(f"{api}/experiments/get-by-name?experiment_name=assay")["experiment"]
    found = _get(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    by_id = {r["info"]["run_id"]: r for r in found}
    for run_id in run_ids:
        run = by_id[run_id]
        assert run["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in run["data"]["metrics"]}
        assert {"val/acc", "test/acc", "test/lift"} <= metrics
        assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # served by it
        files = _get(f"{api}/artifacts/list?run_id={run_id}")["files"]
        assert "learning_curve.png" in {f["path"] for f in files}
    champion = _get(f"{api}/registered-models/alias?name=digits-cnn_tiny&alias=champion")
    assert champion["model_version"]["version"] == "2"
    assert champion["model_version"]["run_id"] == run_ids[1]

    # a 2-worker Ray Train fit: rank 0 logs each epoch through the server, once
    ray_cfg = tiny_config(project, wandb="disabled", max_epochs=2, workers=2)
    ray_run = train(ray_cfg, project).run_id
    run = _get(f"{api}/runs/get?run_id={ray_run}")["run"]
    assert run["info"]["status"] == "FINISHED"
    history = _get(f"{api}/metrics/get-history?run_id={ray_run}&metric_key=val/acc")["metrics"]
    assert sorted(m["step"] for m in history) == [0, 1]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags.get("ray.workers") == "2", sorted(tags)

    # a sweep: its runs through the server, its study on the same PostgreSQL
    study = f"pg-{uuid.uuid4().hex[:6]}"
    storage = pg_databases[1]
    sweep = write_sweep(project, study, trials=2, epochs=2, storage=storage)
    result = run_sweep(load_sweep(sweep, root=project), console=Lines())
    assert result.counts["complete"] == 2 and result.error is None, result
    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    found = _get(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    children = [
        r
        for r in found
        for t in r["data"].get("tags", [])
        if t["key"] == "mlflow.parentRunId" and t["value"] == result.parent_run_id
    ]
    assert len(children) == 2 and all(r["info"]["status"] == "FINISHED" for r in children)
    assert by_id.keys() < {r["info"]["run_id"] for r in found}

    # MLflow's database given as the study's: refused, saying why, before any trial runs
    clash = write_sweep(project, "clash", trials=1, epochs=1, storage=pg_databases[0])
    with pytest.raises(SweepError, match="holds another program's tables .* a database of its own"):
        run_sweep(load_sweep(clash, root=project), console=Lines())
    found = _get(f"{api}/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    assert all(r["info"]["status"] != "RUNNING" for r in found)
