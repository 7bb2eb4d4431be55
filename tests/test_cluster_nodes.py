"""A multi-node Ray cluster on this machine (`assay cluster up` + `assay cluster add-node`, every
node on 127.0.0.1) that loses a node in the middle of a 2-worker training: Ray Train restarts the
group once a replacement node has joined (no autoscaler: the test starts it, as an operator
would), the workers resume from the last checkpoint on the shared storage path, and the run is one
MLflow run, FINISHED, each epoch logged once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from mlflow.tracking import MlflowClient

from assay import cluster, nodes
from tests.conftest import ray_processes
from tests.sweeps_support import optuna_study, write_sweep

pytestmark = pytest.mark.slow


def _family(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _is_train_worker(p: psutil.Process) -> bool:
    """A Ray Train worker (a process may exit between being listed and being read)."""
    try:
        return "RayTrainWorker" in p.name()
    except psutil.Error:
        return False


def _kill_node(node: nodes.NodeProcess) -> list[int]:
    """Lose the node: SIGKILL its process and everything it started (raylet, agents, workers;
    Ray's workers sit in process groups of their own), at once."""
    family = _family(node.pid)
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)
    return [p.pid for p in family]


def test_a_node_lost_mid_training_is_replaced_and_the_run_resumes(project, no_ray_left):
    epochs = 8
    head = cluster.up(project, num_cpus=1)
    try:
        node = nodes.add_node(project, head.address, num_cpus=1)
        listed = json.loads((project / nodes.NODES).read_text())
        assert [n["pid"] for n in listed] == [node.pid]
        cmd = [sys.executable, "-m", "assay.cli", "train", "--dataset", "digits", "--arch", "cnn"]
        cmd += ["--workers", "2", "--set", f"ray.address={head.address}"]
        cmd += ["--set", "ray.placement=STRICT_SPREAD"]  # one worker per node, or wait
        for key, value in {
            "max_epochs": epochs,
            "early_stopping_patience": 0,
            "max_failures": 2,
            "batch_size": 16,  # epochs of ~1 s: longer than Ray takes to register a checkpoint
        }.items():
            cmd += ["--set", f"train.{key}={value}"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
        env.pop("RAY_ADDRESS", None)
        log = project / "train.log"
        with log.open("w") as sink:
            proc = subprocess.Popen(
                cmd, cwd=project, stdout=sink, stderr=subprocess.STDOUT, env=env
            )
            try:
                deadline = time.time() + 240
                lost = []
                while not lost and time.time() < deadline and proc.poll() is None:
                    snapshots = list(
                        (project / "ray_results").glob("*/checkpoint_manager_snapshot.json")
                    )
                    on_node = [p for p in _family(node.pid) if _is_train_worker(p)]
                    if snapshots and on_node:
                        # the other worker is on the head: spread over both nodes
                        elsewhere = [
                            p
                            for p in ray_processes()
                            if _is_train_worker(p) and p.pid not in {q.pid for q in on_node}
                        ]
                        assert elsewhere, "both workers on one node"
                        lost = _kill_node(node)
                    time.sleep(0.2)
                assert lost, "no worker on the second node to lose: " + log.read_text()[-3000:]
                replacement = nodes.add_node(project, head.address, num_cpus=1)
                assert replacement.name == "node-2"  # the lost one is gone from the record
                assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        cluster.down(project)
    assert not (project / nodes.NODES).exists()
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
    assert len(runs) == 1, "a resumed run must not open a second MLflow run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    for key in ("val/acc", "train/loss"):  # each epoch once: resumed, not restarted
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == list(range(epochs)), (key, steps)
    text = log.read_text()
    assert "Error count: 1" in text, "Ray saw no failure"
    assert "has been marked dead" in text  # the node, not just a worker, was lost
    reports = [line for line in text.splitlines() if "Reporting training result" in line]
    rank0 = [int(r.split("'epoch': ")[1].split(",")[0]) for r in reports if "from rank 0" in r]
    assert rank0.count(0) == 1 and sorted(set(rank0)) == list(range(epochs)), rank0


def test_a_sweeps_trials_spread_over_the_nodes(project, no_ray_left):
    """Two trials at a time on a head and a node of one CPU each: each node runs one, and each
    trial notes the node it ran on."""
    head = cluster.up(project, num_cpus=1)
    try:
        nodes.add_node(project, head.address, num_cpus=1)
        path = write_sweep(project, "spread", epochs=2, trials=2, parallel=2)
        cmd = [sys.executable, "-m", "assay.cli", "sweep", "-e", str(path)]
        cmd += ["--address", head.address]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        done = subprocess.run(
            cmd, cwd=project, env=env, capture_output=True, text=True, timeout=400
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        cluster.down(project)
    trials = optuna_study(project, "spread").get_trials()
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    where = {t.user_attrs["ray_node_id"] for t in trials}
    assert len(where) == 2 and None not in where, where
