"""Sweeps recover by Optuna's own mechanisms (moved from tests/test_sweep.py): a driver killed with
SIGKILL and resumed, a trial's process killed mid-fit and failed by its heartbeat, a trial left
RUNNING without a beat. Every trial is a real digits training with its MLflow child run."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import psutil
import pytest
from optuna.trial import TrialState

from assay.sweep import load_sweep, run_sweep
from tests.conftest import ray_processes
from tests.sweeps_support import (
    Lines,
    child_runs,
    mlflow_client,
    optuna_study,
    retry_of,
    trial_processes,
    write_sweep,
)


@pytest.mark.slow
def test_killed_driver_resumes_the_same_study_without_losing_or_doubling_a_trial(
    project,
    no_ray_left,
):
    """A SIGKILLed driver leaves two trials RUNNING; `--resume` fails them by their stopped
    heartbeats and retries each with its parameters. It also fails and retries a trial left
    RUNNING without a single beat (killed in the instant after its ask, or left by an Assay
    without heartbeats), one Optuna alone would never fail: `--resume` gives it a beat, so it
    goes stale like any other. (That case was test_resume_fails_and_retries_a_running_trial_
    that_never_beat, which ran two sweeps of its own for it.)"""
    # 20 epochs: a trial of ~10-20 s, so the kill below has seconds to find two training; every
    # epoch more is paid again by the five trials and the three retries (it was 40: 221 s here).
    epochs = 20
    path = write_sweep(project, "kill", epochs=epochs, trials=5, parallel=2, heartbeat=2)
    cmd = [sys.executable, "-m", "assay.cli", "sweep", "-e", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(project / "driver.log", "wb")  # noqa: SIM115
    driver = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        # One trial done and two training (their MLflow runs open), each with at least half
        # its epochs still ahead: kill the driver now. (A trial killed before it opened its
        # run has no run to check; on a loaded machine that window is seconds long. A trial in
        # its last epochs can finish in the second before its watchdog sees the driver gone,
        # and did on a fast machine: 1 RUNNING, not 2.) Read with sqlite3, read-only: opening
        # the study with Optuna while the driver creates its tables races the driver's schema
        # migration.
        db = project / "optuna.db"
        while time.time() < deadline:
            time.sleep(0.5)
            if not db.exists():
                continue
            try:
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    states = [r[0] for r in con.execute("SELECT state FROM trials")]
                    training = con.execute(
                        "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a "
                        "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' "
                        "AND a.key = 'mlflow_run_id' AND (SELECT COUNT(*) FROM "
                        "trial_intermediate_values v WHERE v.trial_id = t.trial_id) <= ?",
                        (epochs // 2,),
                    ).fetchone()[0]
            except sqlite3.Error:  # the tables are being created
                continue
            if states.count("COMPLETE") >= 1 and training == 2:
                break
        else:
            pytest.fail("the sweep never had a trial done and two running")
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        # The trials die with their driver (each watches its pid)...
        deadline = time.time() + 15
        while time.time() < deadline and trial_processes():
            time.sleep(0.5)
        assert not trial_processes()
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
        # ...but a SIGKILLed driver's local Ray leaves its agents behind for a while (they poll
        # for their raylet; `ray stop` would end them). End them here.
        for p in ray_processes():
            with contextlib.suppress(psutil.Error):
                p.kill()
    killed = optuna_study(project, "kill")
    running = [t.number for t in killed.get_trials() if t.state == TrialState.RUNNING]
    assert len(running) == 2
    ghost = killed.ask().number  # RUNNING, never a heartbeat: a plain storage's ask

    done = subprocess.run(
        [*cmd, "--resume"], cwd=project, env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    trials = optuna_study(project, "kill").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(finished) == 5  # all requested trials, none counted twice
    # The trials the kill interrupted stopped beating, and the ghost went stale after the beat
    # `--resume` gave it: Optuna failed them and queued their parameters again
    # (RetryHeartbeatStaleTrialCallback), each retried once.
    assert sorted(t.number for t in failed) == [*running, ghost], done.stdout
    assert "marked failed" in done.stdout, done.stdout
    retried = {retry_of(t): t for t in trials if retry_of(t) is not None}
    assert sorted(retried) == [*running, ghost]
    for number, retry in retried.items():
        if number != ghost:  # the ghost was never given parameters
            assert retry.params == trials[number].params
        assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    client = mlflow_client(project)
    parent = killed.user_attrs["mlflow_parent_run_id"]
    children = child_runs(client, parent)
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    # one to one, no duplicate runs; the ghost never ran, so it has none
    assert len(children) == len(by_trial) == len(trials) - 1 and ghost not in by_trial
    status = {"complete": "FINISHED", "pruned": "FINISHED", "fail": "KILLED"}
    for t in trials:
        if t.number == ghost:
            continue
        run = by_trial[t.number]
        assert run.info.status == status[t.state.name.lower()], t.number
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
    assert client.get_run(parent).info.status == "FINISHED"


@pytest.mark.slow
def test_a_trial_whose_process_is_killed_is_failed_by_its_heartbeat_and_retried(
    project,
    no_ray_left,
):
    """Optuna's own recovery, with the driver alive: the trial's Ray worker is SIGKILLed mid-fit;
    its heartbeat stops, Optuna fails it and queues its parameters again, the driver starts a
    worker for them, and the sweep ends with its budget met and no MLflow run left RUNNING."""
    import threading

    path = write_sweep(project, "stale", epochs=20, trials=2, parallel=1, heartbeat=1)
    killed: list[int] = []

    def kill_first_trial() -> None:
        deadline = time.time() + 200
        while time.time() < deadline and not killed:
            time.sleep(0.3)
            with contextlib.suppress(Exception):
                (t0, *_) = optuna_study(project, "stale").get_trials(deepcopy=False)
                if t0.intermediate_values and t0.state == TrialState.RUNNING:
                    for p in trial_processes():
                        p.kill()
                        killed.append(p.pid)

    killer = threading.Thread(target=kill_first_trial, daemon=True)
    killer.start()
    lines = Lines()
    result = run_sweep(load_sweep(path, root=project), console=lines)
    killer.join(5)
    assert killed, "trial 0 never ran long enough to be killed"
    text = "\n".join(lines.lines)
    trials = optuna_study(project, "stale").get_trials()
    first, *rest = trials
    assert first.state == TrialState.FAIL and "error" not in first.user_attrs, text
    (retry,) = [t for t in rest if retry_of(t) == 0]
    assert retry.params == first.params and retry.state == TrialState.COMPLETE, text
    assert "a trial worker stopped" in text and "(retrying trial 0)" in text, text
    assert result.counts["complete"] == 2 and result.error is None
    client = mlflow_client(project)
    runs = {int(r.data.tags["optuna.trial"]): r for r in child_runs(client, result.parent_run_id)}
    assert sorted(runs) == [t.number for t in trials]
    assert runs[0].info.status == "KILLED" and runs[0].data.tags["trial.state"] == "failed"
    assert all(runs[t.number].info.status == "FINISHED" for t in rest)
