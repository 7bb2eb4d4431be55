"""Every artifact a stage writes names its MLflow run, and the stage that reads it checks: a score
of one run is never registered for another, a checkpoint of one run is never scored as another's
(issue: "Nothing silently wrong, nothing lost")."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from assay.artifacts import png_run
from assay.cli import app
from assay.evaluation import evaluate
from assay.registry import register
from assay.training import train
from tests.conftest import tiny_config

KEY = "digits-cnn_tiny"


def _client(root):
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def _cli(project, monkeypatch, *args):
    monkeypatch.chdir(project)
    base = ["--set", "train.dataset=digits", "--set", "train.arch=cnn_tiny"]
    more = ["--set", "train.max_epochs=1", "--set", "tracking.wandb.mode=disabled"]
    return CliRunner().invoke(app, [*args, *base, *(more if args[0] == "train" else [])])


def test_every_output_names_the_run_that_made_it(project):
    cfg = tiny_config(project, wandb="disabled")
    result = train(cfg, project)
    evaluate(cfg, project)
    register(cfg, project)
    out, run_id = project / "outputs" / KEY, result.run_id

    assert json.loads((out / "model/run.json").read_text())["mlflow_run_id"] == run_id
    state = torch.load(out / "model/best.ckpt", map_location="cpu", weights_only=False)
    assert state["assay"] == {"mlflow_run_id": run_id, "key": KEY}
    assert png_run(out / "learning_curve.png") == run_id
    assert json.loads((out / "metrics.json").read_text())["mlflow_run_id"] == run_id
    assert json.loads((out / "eval/run.json").read_text())["mlflow_run_id"] == run_id
    assert all(png_run(p) == run_id for p in (out / "eval").glob("*.png"))
    assert json.loads((out / "registration.json").read_text())["mlflow_run_id"] == run_id


def test_register_refuses_the_score_of_a_previous_run(project, monkeypatch):
    """train -> evaluate -> register, then train again and register without evaluating: the
    new model must not be registered with the old model's score (it was, silently, rc 0)."""
    assert _cli(project, monkeypatch, "train").exit_code == 0
    assert _cli(project, monkeypatch, "evaluate").exit_code == 0
    assert _cli(project, monkeypatch, "register").exit_code == 0
    out = project / "outputs" / KEY
    first = json.loads((out / "metrics.json").read_text())["mlflow_run_id"]
    registration = (out / "registration.json").read_bytes()

    assert _cli(project, monkeypatch, "train").exit_code == 0
    second = json.loads((out / "model/run.json").read_text())["mlflow_run_id"]
    refused = _cli(project, monkeypatch, "register")

    assert refused.exit_code == 2, refused.output
    message = " ".join(refused.stderr.split())
    assert f"scores run {first}" in message and f"is run {second}" in message
    assert "assay evaluate" in message
    assert (out / "registration.json").read_bytes() == registration  # left as it was
    assert len(_client(project).search_model_versions(f"name='{KEY}'")) == 1

    # what it says to do works: evaluate, then register the new run with its own score
    assert _cli(project, monkeypatch, "evaluate").exit_code == 0
    assert _cli(project, monkeypatch, "register").exit_code == 0
    v2 = _client(project).get_model_version(KEY, "2")
    assert v2.run_id == second


def test_evaluate_refuses_a_checkpoint_of_another_run(project):
    cfg = tiny_config(project, wandb="disabled")
    train(cfg, project)
    out = project / "outputs" / KEY
    stash = project / "first.ckpt"
    shutil.copy(out / "model/best.ckpt", stash)
    second = train(cfg, project).run_id
    shutil.copy(stash, out / "model/best.ckpt")  # a checkpoint from the first run

    with pytest.raises(ValueError, match=f"written by run .*but run.json names run {second}"):
        evaluate(cfg, project)
    assert not (out / "metrics.json").exists() and not (out / "eval").exists()


def test_evaluate_refuses_a_model_whose_run_was_deleted_or_is_elsewhere(project):
    cfg = tiny_config(project, wandb="disabled")
    run_id = train(cfg, project).run_id
    _client(project).delete_run(run_id)
    with pytest.raises(ValueError, match=f"run {run_id}, which was deleted"):
        evaluate(cfg, project)
    run_json = project / "outputs" / KEY / "model/run.json"
    info = json.loads(run_json.read_text())  # a store that never held the run
    run_json.write_text(
        json.dumps({**info, "mlflow_tracking_uri": f"sqlite:///{project / 'x.db'}"})
    )
    with pytest.raises(ValueError, match=f"run {run_id}, which is not in the store"):
        evaluate(cfg, project)
    assert not (project / "outputs" / KEY / "metrics.json").exists()
