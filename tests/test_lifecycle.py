"""Killed for real: `assay train` under SIGKILL, SIGTERM and a parent (`dvc repro`) SIGKILLed,
and `assay mlflow-server` under SIGTERM. Nothing may stay RUNNING, half-written or listening."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from assay.training import train
from tests.conftest import free_port, tiny_config
from tests.test_pipeline import _run, repo  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

KEY = "digits-cnn_tiny"
STOP_S = 120  # a stop takes seconds; generous, for a busy 2-core CI machine
LONG = [
    "--set",
    "train.dataset=digits",
    "--set",
    "train.arch=cnn_tiny",
    "--set",
    "train.max_epochs=300",
    "--set",
    "train.early_stopping_patience=0",
    "--set",
    "tracking.wandb.mode=disabled",
]


def _env() -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": path}


def _assay(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`assay ARGS` in its own process group (so the test can always end all of it)."""
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "assay.cli", *args],
            cwd=cwd,
            env=_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.contextmanager
def _reaped(*procs: subprocess.Popen):
    """End every process group started here, pass or fail."""
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)


def _client(root: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}")


def _running(root: Path, key: str = KEY) -> str | None:
    """The id of KEY's RUNNING run, or None (yet). Read with sqlite3, read-only: an MlflowClient
    here would migrate the schema while `assay` creates the store, which breaks it (PITFALLS)."""
    db = root / "mlflow.db"
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            row = con.execute(
                "select r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
                "where r.status = 'RUNNING' and t.key = 'assay.key' and t.value = ?",
                (key,),
            ).fetchone()
    except sqlite3.Error:  # being created
        return None
    return row[0] if row else None


def _scratch(root: Path, key: str = KEY) -> list[Path]:
    return sorted((root / "outputs" / key).glob(".*"))


def _wait_training(
    proc: subprocess.Popen, root: Path, log: Path, timeout: float = 180, key: str = KEY
):
    """Until the run is RUNNING and its model's scratch folder exists: the run's id."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = _running(root, key)
        if run is not None and _scratch(root, key):
            time.sleep(2)  # into the fit
            return run
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    pytest.fail(f"no RUNNING run with a scratch folder:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return "\n".join(line for line in log.read_text().splitlines() if "━" not in line)[-3000:]


def _wait(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_S} s after the signal:\n{_tail(log)}")


def _killed_run(project: Path):
    """`assay train` killed with SIGKILL mid-fit: its run (RUNNING) and scratch folder."""
    log = project / "train.log"
    proc = _assay(["train", *LONG], project, log)
    with _reaped(proc):
        run = _wait_training(proc, project, log)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    scratch = _scratch(project)
    assert _client(project).get_run(run).info.status == "RUNNING"
    assert [p.name for p in scratch] and all(p.exists() for p in scratch)
    return run, proc.pid, scratch


def test_the_next_run_of_a_key_closes_a_kill_9_predecessor_and_its_scratch(project):
    dead, pid, scratch = _killed_run(project)

    result = train(tiny_config(project, wandb="disabled", max_epochs=1), project)

    client = _client(project)
    closed = client.get_run(dead)
    assert closed.info.status == "KILLED"
    assert closed.data.tags["assay.closed_by"] == f"run {result.run_id}"
    note = closed.data.tags["error"]
    assert f"process {pid} on {socket.gethostname()}" in note and result.run_id in note
    assert not any(p.exists() for p in scratch)
    assert client.get_run(result.run_id).info.status == "FINISHED"


def _gc(project, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "assay.cli", "runs", "gc", *args],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runs_gc_closes_dead_runs_and_removes_stray_scratch(project):
    dead, pid, scratch = _killed_run(project)
    old = project / "outputs" / "other" / ".eval.4194305-abcd1234"  # above any pid_max
    young = project / "outputs" / "other" / ".metrics.json.4194305-abcd1234"
    old.mkdir(parents=True)
    young.write_text("{}")
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    dry = _gc(project, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "dry run: nothing changed" in dry.stdout
    assert _client(project).get_run(dead).info.status == "RUNNING"
    assert all(p.exists() for p in [*scratch, old, young])

    done = _gc(project)
    assert done.returncode == 0, done.stdout + done.stderr
    closed = _client(project).get_run(dead)
    assert closed.info.status == "KILLED"
    assert f"process {pid} on" in closed.data.tags["error"]
    assert "assay runs gc" in closed.data.tags["assay.closed_by"]
    assert not any(p.exists() for p in [*scratch, old])
    assert young.exists()  # a minute old: maybe a live process's on another machine


def test_sigterm_ends_the_run_killed_and_leaves_no_output(project):
    log = project / "train.log"
    proc = _assay(["train", *LONG], project, log)
    with _reaped(proc):
        run = _wait_training(proc, project, log)
        proc.send_signal(signal.SIGTERM)
        rc = _wait(proc, log)
    assert rc != 0
    ended = _client(project).get_run(run)
    assert ended.info.status == "KILLED", _tail(log)
    assert ended.data.tags["error"] == "stopped by SIGTERM"
    assert not (project / "outputs").exists()  # no scratch, no output, no empty folder


def _train_child(parent: psutil.Process) -> psutil.Process | None:
    for p in parent.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "train" in p.cmdline():
                return p
    return None


def test_a_killed_dvc_repro_takes_its_assay_train_with_it(repo):  # noqa: F811
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (key,) = params["runs"]  # the pipeline test's one run
    params["runs"][key].update({"max_epochs": 300, "early_stopping_patience": 0})
    params["tracking"]["wandb"]["mode"] = "disabled"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = repo / "dvc.log"
    with open(log, "wb") as f:
        dvc = subprocess.Popen(
            ["dvc", "repro", f"train@{key}"],
            cwd=repo,
            # no SHELL: dvc then runs the stage under /bin/sh (dash), which stays as assay's
            # parent, as in CI; and SIGHUP as in a terminal, whatever pytest was started with
            env={k: v for k, v in _env().items() if k != "SHELL"},
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
        )
    with _reaped(dvc):
        run = _wait_training(dvc, repo, log, timeout=300, key=key)
        child = _train_child(psutil.Process(dvc.pid))
        assert child is not None, log.read_text()[-3000:]
        dvc.send_signal(signal.SIGKILL)
        dvc.wait(30)
        _, alive = psutil.wait_procs([child], timeout=STOP_S)
        assert not alive, f"assay train went on without its dvc repro:\n{_tail(log)}"
    ended = _client(repo).get_run(run)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["error"].startswith("stopped by SIG")
    assert not (repo / "outputs").exists()  # no scratch, no output, no empty folder


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_mlflow_server_and_everything_it_started(project):
    port = free_port()
    log = project / "server.log"
    proc = _assay(["mlflow-server", "--port", str(port)], project, log)
    family: list[psutil.Process] = []
    try:
        deadline = time.time() + 120
        while not _listening(port):
            assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        family = psutil.Process(proc.pid).children(recursive=True)
        groups = {os.getpgid(p.pid) for p in [proc, *family]}

        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        _, alive = psutil.wait_procs(family, timeout=15)
        assert not alive, [" ".join(p.cmdline())[:100] for p in alive]
        left = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) in groups]
        assert not left, [p.pid for p in left]
        assert not _listening(port)
    finally:
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
