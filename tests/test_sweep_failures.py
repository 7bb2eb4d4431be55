"""A sweep that cannot succeed says so: what every trial needs is checked in the driver before the
study, MLflow or Ray is touched (exit 2), and a sweep whose trials all fail exits 1 with its parent
run FAILED and no best parameters written (a DVC stage that runs it fails too)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import ray
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from assay.cli import app
from tests.conftest import REPO, ray_processes
from tests.sweeps_support import BASE, write_sweep


def _runs(root: Path) -> list:
    if not (root / "mlflow.db").exists():
        return []
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _refused_before_anything(root: Path, study: str, r, seconds: float) -> None:
    assert r.exit_code == 2, r.output
    # no study, no run, no outputs, no Ray: nothing to clean up after a refusal
    if (root / "optuna.db").exists():
        names = [
            s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{root}/optuna.db")
        ]
        assert study not in names
    assert _runs(root) == []
    assert not (root / "outputs").exists()
    # (other Ray processes of this user may belong to other tests: only ours count)
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not ray.is_initialized() and not [p for p in ray_processes() if p.pid in ours]
    assert seconds < 60  # no trial was tried: today's sweeps took longer just to start Ray


# ------------------------------------------------------------------------------- preflight
def _refused_sweep(root: Path, path: Path, study: str, monkeypatch) -> str:
    """`assay sweep -e PATH` from `root`, refused before anything ran: its message, unwrapped."""
    monkeypatch.chdir(root)
    started = time.perf_counter()
    r = CliRunner().invoke(app, ["sweep", "-e", str(path)])
    _refused_before_anything(root, study, r, time.perf_counter() - started)
    return " ".join(r.stderr.split())  # rich wraps long lines


def test_a_sweep_on_data_not_prepared_is_refused_before_ray_starts(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # a project without data/digits
    path = write_sweep(tmp_path, "nodata")
    said = _refused_sweep(tmp_path, path, "nodata", monkeypatch)
    assert "data/digits is not prepared: run `dvc repro prepare@digits`" in said


def test_a_gan_sweep_without_its_judge_is_refused_before_ray_starts(project, monkeypatch):
    path = write_sweep(
        project,
        "gan",
        set=[*BASE[2:], "train.dataset=digits", "train.arch=gan_tiny", "train.max_epochs=1"],
        objective={"metric": "val/fd", "direction": "minimize"},
        space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
    )
    said = _refused_sweep(project, path, "gan", monkeypatch)
    assert "the GAN's judge models:/digits-cnn@champion is not in" in said
    assert "dvc repro register@digits-cnn" in said


# --------------------------------------------------------------------- every trial failed
@pytest.mark.slow
def test_a_sweep_whose_every_trial_fails_exits_1_and_claims_no_best(project, no_ray_left):
    # The model logs no val/nope: each trial's monitor check fails after its sanity check.
    path = write_sweep(project, "nope", trials=2, objective={"metric": "val/nope"})
    out = project / "outputs/sweeps/nope"
    out.mkdir(parents=True)
    for name in ("best_params.yaml", "metrics.json"):  # an earlier run's, now stale
        (out / name).write_text("{}\n")
    cmd = [sys.executable, "-m", "assay.cli", "sweep", "-e", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=400)
    log = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 1, log
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert "no trial completed (2 failed, 0 pruned)" in said, log
    assert "logs no 'val/nope'" in said and "assay sweep status nope" in said, log
    assert not (out / "best_params.yaml").exists() and not (out / "metrics.json").exists()
    study = optuna.load_study(study_name="nope", storage=f"sqlite:///{project}/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    runs = {r.info.run_name: r for r in _runs(project)}
    parent = runs.pop("sweep-nope")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["error"].startswith("no trial completed (2 failed, 0 pruned)")
    assert sorted(runs) == ["nope-trial-0", "nope-trial-1"]
    for run in runs.values():  # the trials' own runs, FAILED with their error
        assert run.info.status == "FAILED" and "val/nope" in run.data.tags["error"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    rows = (out / "trials.csv").read_text()
    assert rows.count("logs no 'val/nope'") == 2  # each trial's error, in one line
