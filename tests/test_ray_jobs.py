"""Ray Jobs for real: `assay cluster up` starts a head on loopback, `assay mlflow-server` a
tracking server, and `assay submit` (and plain `ray job submit`) run trainings on the head that
log to that server; a submit without a cluster, or asking for GPUs the machine lacks, is refused
before any run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def _wait_http(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def _assay(project: Path, *args: str, env=None, timeout: float = 300):
    # as from an activated virtual environment: a head started here finds `assay` on its PATH
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "assay.cli", *args],
        cwd=project,
        env={**os.environ, "PATH": path, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_submit_a_job_to_a_local_head_that_logs_to_an_mlflow_server(project, no_ray_left):
    """`assay cluster up`, `assay mlflow-server`, `assay submit --follow` (2 Ray Train workers
    inside the job), then the run is found through MlflowClient on the server; `assay cluster
    down` stops the head by its process id, and the server is stopped by its own."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "assay.cli", "mlflow-server", "--port", str(port)],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        up = _assay(project, "cluster", "up", "--num-cpus", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "dashboard: http://127.0.0.1:" in up.stdout.replace("\n", " ")
        status = _assay(project, "cluster", "status")
        assert status.returncode == 0 and "Ray head up" in status.stdout
        _wait_http(uri)
        job = _assay(
            project,
            "submit",
            "--set",
            "train.dataset=digits",
            "--set",
            "train.arch=cnn_tiny",
            "--set",
            "train.max_epochs=2",
            "--workers",
            "2",
            "--follow",
            env={"MLFLOW_TRACKING_URI": uri},
            timeout=400,
        )
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "SUCCEEDED" in job.stdout
        job_id = job.stdout.split("as Ray job ")[1].split()[0]
        listed = _assay(project, "jobs", "list")
        assert job_id[:12] in listed.stdout and "SUCCEEDED" in listed.stdout
        logs = _assay(project, "jobs", "logs", job_id)
        assert "trained digits-cnn_tiny" in logs.stdout

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
        assert len(runs) == 1
        run = runs[0]
        assert run.info.status == "FINISHED" and run.data.tags["ray.workers"] == "2"
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
        logged = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoints", "learning_curve.png"} <= logged
        # the server keeps the project's own store: the user sees the job's run there too
        assert _client(project).get_run(run.info.run_id).info.status == "FINISHED"

        # plain `ray job submit -- assay train ...`, as the README shows it
        dashboard = json.loads((project / ".assay/cluster.json").read_text())["dashboard"]
        bin_dir = str(Path(sys.executable).parent)
        runtime_env = {
            "excludes": ["data/raw", "mlruns", "wandb", "ray_results", ".assay", "*.db"],
            "env_vars": {"MLFLOW_TRACKING_URI": uri},
        }
        plain = subprocess.run(
            [
                f"{bin_dir}/ray",
                "job",
                "submit",
                "--address",
                dashboard,
                "--working-dir",
                ".",
                "--runtime-env-json",
                json.dumps(runtime_env),
                "--",
                "assay",
                "train",
                "--set",
                "train.dataset=digits",
                "--set",
                "train.arch=mlp_tiny",
                "--set",
                "train.max_epochs=1",
            ],
            cwd=project,
            env={**os.environ, "RAY_AUTH_MODE": "token", "PATH": f"{bin_dir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-3000:]
        experiment = client.get_experiment_by_name("assay").experiment_id
        keys = {r.data.tags.get("assay.key") for r in client.search_runs([experiment])}
        assert keys == {"digits-cnn_tiny", "digits-mlp_tiny"}
    finally:
        down = _assay(project, "cluster", "down")
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert down.returncode == 0 and "stopped the Ray head" in down.stdout


def test_submit_without_a_cluster_says_how_to_get_one(project):
    result = _assay(project, "submit", "--set", "train.dataset=digits", env={"RAY_ADDRESS": ""})
    assert result.returncode == 2
    assert "assay cluster up" in result.stderr


@pytest.mark.bare
def test_gpus_this_machine_lacks_are_refused_before_any_run(project, no_ray_left):
    """A local Ray asked for GPUs it has not got would wait for them forever."""
    args = ("--set", "train.dataset=digits", "--set", "train.accelerator=gpu")
    result = _assay(project, "train", "--workers", "64", "--gpus-per-worker", "1", *args)
    assert result.returncode == 2, result.stderr
    assert "64 workers x 1.0 GPU need 64 GPU(s)" in result.stderr
    assert "train.gpus_per_worker=0" in result.stderr
    assert not (project / "mlflow.db").exists() or not _client(project).search_runs(
        [e.experiment_id for e in _client(project).search_experiments()]
    )
