"""A sweep that cannot succeed says so: what every trial needs is checked in the driver before the
study, MLflow or Ray is touched (exit 2), and a sweep whose trials all fail exits 1 with its parent
run FAILED and no best parameters written (a DVC stage that runs it fails too)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import optuna
import psutil
import ray
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from assay.cli import app
from tests.conftest import REPO
from tests.test_ray import _ray_processes, no_ray_left  # noqa: F401  (fixture)
from tests.test_sweep import BASE, _write


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
    assert not ray.is_initialized() and not [p for p in _ray_processes() if p.pid in ours]
    assert seconds < 60  # no trial was tried: today's sweeps took longer just to start Ray


# ------------------------------------------------------------------------------- preflight
def test_a_sweep_on_data_not_prepared_is_refused_before_ray_starts(tmp_path, monkeypatch):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # a project without data/digits
    path = _write(tmp_path, "nodata")
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    r = CliRunner().invoke(app, ["sweep", "-e", str(path)])
    _refused_before_anything(tmp_path, "nodata", r, time.perf_counter() - started)
    said = " ".join(r.stderr.split())  # rich wraps long lines
    assert "data/digits is not prepared: run `dvc repro prepare@digits`" in said


def test_a_gan_sweep_without_its_judge_is_refused_before_ray_starts(project, monkeypatch):
    path = _write(
        project,
        "gan",
        set=[*BASE[2:], "train.dataset=digits", "train.arch=gan_tiny", "train.max_epochs=1"],
        objective={"metric": "val/fd", "direction": "minimize"},
        space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}},
    )
    monkeypatch.chdir(project)
    started = time.perf_counter()
    r = CliRunner().invoke(app, ["sweep", "-e", str(path)])
    _refused_before_anything(project, "gan", r, time.perf_counter() - started)
    said = " ".join(r.stderr.split())  # rich wraps long lines
    assert "the GAN's judge models:/digits-cnn@champion is not in" in said
    assert "dvc repro register@digits-cnn" in said
