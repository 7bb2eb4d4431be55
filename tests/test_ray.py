"""Ray Train for real: a local Ray started for each run, two gloo workers, a worker killed with
SIGKILL mid-training, and retries exhausted. Each run must leave one MLflow run and one W&B run,
and no Ray process behind."""

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

from assay.lineage import trace
from assay.training import train
from tests.conftest import ray_processes, tiny_config

pytestmark = pytest.mark.slow


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def _epochs_logged(client: MlflowClient, run_id: str, key: str = "val/acc") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_two_workers_train_into_one_mlflow_and_one_wandb_run(project, no_ray_left):
    cfg = tiny_config(project, max_epochs=3, workers=2)
    fast = cfg.tracking.model_copy(update={"system_metrics_interval": 0.5})  # 10 s: longer than
    cfg = cfg.model_copy(update={"tracking": fast})  # this tiny fit
    result = train(cfg, project)
    client = _client(project)
    runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
    assert [r.info.run_id for r in runs] == [result.run_id]
    run = runs[0]
    # system metrics: one stream for the one machine the two workers share, none from the driver
    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert "system/node0/cpu_utilization_percentage" in system, sorted(run.data.metrics)
    assert "system/node0/system_memory_usage_megabytes" in system
    assert all(k.startswith("system/node0/") for k in system), system
    assert run.info.status == "FINISHED"
    assert run.data.tags["ray.workers"] == "2"
    storage = Path(run.data.tags["ray.storage_path"])
    assert storage.parent == project / "ray_results" and storage.name == run.info.run_name
    assert len(client.get_metric_history(result.run_id, "val/acc")) == 3
    info = json.loads((project / "outputs/digits-cnn_tiny/model/run.json").read_text())
    assert info["epochs"] == 3 and info["ray"]["workers"] == 2
    assert (project / "outputs/digits-cnn_tiny/model/best.ckpt").exists()
    assert (project / "outputs/digits-cnn_tiny/history.csv").read_text().count("\n") == 4
    # W&B: rank 0 wrote the run; the driver joined it for the summary (same id, offline files)
    dirs = list((project / "wandb").glob(f"offline-run-*-{result.wandb_id}"))
    assert dirs and all((d / f"run-{result.wandb_id}.wandb").stat().st_size > 0 for d in dirs)
    records = b"".join((d / f"run-{result.wandb_id}.wandb").read_bytes() for d in dirs)
    assert b"val/acc" in records and result.run_id.encode() in records
    assert str(storage).encode() in records  # the Ray run's storage path, in the W&B config
    # its lineage names the Ray run and finds its folder (tests/test_lineage.py: the rest)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    ray = trace(f"runs:/{result.run_id}", project, uri)["ray"]
    checkpoint = Path(ray.pop("checkpoint"))
    assert ray == {
        "run_name": run.info.run_name,
        "storage_path": str(storage),
        "workers": "2",
        "exists": True,
    }
    assert checkpoint.parent == storage and (checkpoint / "checkpoint.ckpt").is_file()


def test_killing_a_worker_resumes_from_its_checkpoint_in_the_same_run(project, no_ray_left):
    """SIGKILL one real Ray Train worker after the first epoch's checkpoint: Ray restarts the
    group, the workers resume from that checkpoint, and the run ends FINISHED, alone, with every
    epoch logged exactly once."""
    epochs = 8
    cmd = [
        sys.executable,
        "-m",
        "assay.cli",
        "train",
        "--dataset",
        "digits",
        "--arch",
        "cnn",
        "--workers",
        "2",
        "--set",
        f"train.max_epochs={epochs}",
        "--set",
        "train.early_stopping_patience=0",
        "--set",
        "train.max_failures=2",
        "--set",
        "train.batch_size=16",  # epochs of ~1 s: longer than Ray takes to register a checkpoint
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
    log = project / "train.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=project, stdout=sink, stderr=subprocess.STDOUT, env=env)
        try:
            killed = None
            deadline = time.time() + 240
            while killed is None and time.time() < deadline and proc.poll() is None:
                # a checkpoint Ray has registered (reported, not just being written)
                if list((project / "ray_results").glob("*/checkpoint_manager_snapshot.json")):
                    workers = [p for p in ray_processes() if "RayTrainWorker" in p.name()]
                    workers = workers or [
                        p for p in ray_processes() if "RayTrainWorker" in " ".join(p.cmdline())
                    ]
                    if workers:
                        killed = workers[0].pid
                        os.kill(killed, signal.SIGKILL)
                time.sleep(0.2)
            assert killed, "no worker to kill: " + log.read_text()[-3000:]
            assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    client = _client(project)
    runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
    assert len(runs) == 1, "a resumed run must not open a second MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    # one validation and one training loss per epoch (the step is the epoch), none repeated:
    # resumed, not restarted from scratch
    for key in ("val/acc", "train/loss"):
        assert sorted(_epochs_logged(client, run.info.run_id, key)) == list(range(epochs)), key
    history = (project / "outputs/digits-cnn/history.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in history[1:]] == list(range(epochs))
    text = log.read_text()
    assert "Error count: 1" in text, "Ray saw no worker failure"
    # The restarted group resumed from a checkpoint, not from scratch: epoch 0 was trained once.
    # At most the epoch in flight at the kill runs again (its checkpoint was not registered).
    reports = [line for line in text.splitlines() if "Reporting training result" in line]
    rank0 = [int(r.split("'epoch': ")[1].split(",")[0]) for r in reports if "from rank 0" in r]
    assert rank0.count(0) == 1 and sorted(set(rank0)) == list(range(epochs)), rank0
    # Ray resumes from the last checkpoint its controller had registered, which can trail the
    # last one reported by an epoch; never from scratch (epoch 0 once, above).
    assert len(rank0) <= epochs + 2, rank0


def test_a_crash_that_exhausts_the_retries_ends_failed_with_the_worker_traceback(
    project, no_ray_left
):
    # A crash inside the workers' fit: a monitor the model never logs fails after the sanity
    # check. (It was a cut train.npz; the driver now refuses damaged data before any run.)
    with pytest.raises(Exception, match="(?s)logs no 'val/nope'"):
        train(tiny_config(project, workers=2, max_failures=0, monitor="val/nope:max"), project)
    client = _client(project)
    runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    error = client.download_artifacts(runs[0].info.run_id, "error.txt", str(project))
    text = Path(error).read_text()
    assert "Traceback" in text and "logs no 'val/nope'" in text
    assert not (project / "outputs/digits-cnn_tiny/model").exists()


def test_a_ray_task_told_to_stop_ends_its_run_killed(project, no_ray_left):
    """Ray stops a task's worker with SIGTERM (a dead driver's workers, a cluster going down);
    Ray's own handler makes that a SystemExit marked as its stop. The run the task was training
    ends KILLED, saying so, not FAILED like a crash of its own (a sweep's killed trials did)."""
    import ray

    from assay.distributed import ray_session
    from assay.training import RunOptions

    cfg = tiny_config(project, max_epochs=300, wandb="disabled")
    started = project / "started"

    @ray.remote(num_cpus=1, max_retries=0)
    def trial() -> None:
        def on_run(run_id: str) -> None:
            started.write_text(f"{os.getpid()} {run_id}")

        train(cfg, project, RunOptions(on_run=on_run, progress_bar=False))

    with ray_session(cfg, dashboard=False):
        ref = trial.remote()
        deadline = time.time() + 120
        while time.time() < deadline and not started.exists():
            time.sleep(0.2)
        assert started.exists(), "the task never opened its run"
        time.sleep(2)  # into the fit
        pid, run_id = started.read_text().split()
        os.kill(int(pid), signal.SIGTERM)
        with pytest.raises(ray.exceptions.RayError):
            ray.get(ref, timeout=60)
    run = _client(project).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["error"] == "stopped by Ray: The process receives a SIGTERM."
    assert not (project / "outputs/digits-cnn_tiny/model").exists()
