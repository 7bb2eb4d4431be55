"""Every registered objective, end to end: its smoke run (`Objective.smoke`, a tiny preset on
real prepared data) trains, is scored by the objective's own scorer, passes the champion gate
with the objective's primary metric and direction, and answers `assay predict` on its logged
input example exactly as MLflow's own loader does. A new objective is covered by registering it.
(The per-family details stay in tests/test_families.py.)"""

from __future__ import annotations

import csv

import mlflow
import numpy as np
import pytest
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from assay.cli import app
from assay.evaluation import evaluate
from assay.objectives import get_objective, list_objectives
from assay.registry import register
from assay.training import train
from tests.conftest import family_cfg

pytestmark = pytest.mark.slow


def _smoke(root, name: str):
    """Train, score and register the objective's smoke run; returns (config, run id, scores)."""
    objective = get_objective(name)
    for needed in objective.smoke_after:
        register(_smoke(root, needed)[0], root)
    cfg = family_cfg(root, **objective.smoke)
    run_id = train(cfg, root).run_id
    return cfg, run_id, evaluate(cfg, root).metrics


def _write_input(path_stem, example) -> str:
    if isinstance(example, list):  # texts: one per line
        path = f"{path_stem}.txt"
        with open(path, "w") as f:
            f.write("\n".join(example) + "\n")
        return path
    path = f"{path_stem}.npy"
    np.save(path, np.asarray(example))
    return path


def test_every_objective_is_registered_with_a_smoke_run():
    assert set(list_objectives()) >= {
        "classification",
        "forecast",
        "reconstruction",
        "anomaly",
        "generation",
        "rating",
    }
    for name in list_objectives():
        objective = get_objective(name)
        metric, direction = objective.primary
        assert metric.startswith("test/") and direction in ("max", "min"), name
        assert {"dataset", "arch"} <= set(objective.smoke), name


@pytest.mark.parametrize("name", list_objectives())
def test_objective_trains_scores_registers_and_predicts(fproject, monkeypatch, name):
    objective = get_objective(name)
    cfg, run_id, scores = _smoke(fproject, name)
    primary, direction = objective.primary
    assert primary in scores and all(np.isfinite(v) for v in scores.values())

    uri = f"sqlite:///{fproject / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["objective"] == name
    decision = register(cfg, fproject)
    assert decision.metric == primary and decision.promoted

    # the logged model's own input example, through `assay predict` and through MLflow
    model_uri = f"models:/{cfg.train.key}@champion"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = mlflow.artifacts.download_artifacts(model_uri)
    example = Model.load(local).load_input_example(local)
    if isinstance(example, np.ndarray) and example.dtype.kind in "OU":
        example = example.tolist()  # texts come back as a list already
    monkeypatch.chdir(fproject)
    path = _write_input(fproject / "example", example)
    r = CliRunner().invoke(app, ["predict", "-m", model_uri, "-i", path, "--output", "p.npy"])
    assert r.exit_code == 0, r.output
    ours = np.load(fproject / "p.npy")
    theirs = mlflow.pyfunc.load_model(model_uri).predict(example)
    theirs = theirs["reconstruction"] if isinstance(theirs, dict) else theirs
    np.testing.assert_array_equal(ours, theirs)
    r = CliRunner().invoke(app, ["predict", "-m", model_uri, "-i", path, "--output", "p.csv"])
    assert r.exit_code == 0, r.output
    with open(fproject / "p.csv") as f:
        assert len(list(csv.reader(f))) == 1 + len(example)  # a header and a row per example
