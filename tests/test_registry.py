"""The champion gate in a real MLflow registry, and `assay predict` on what it holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from assay.cli import app
from assay.config import load_config
from assay.data import prepare
from assay.evaluation import evaluate
from assay.registry import beats_baseline, better, register
from assay.training import train
from tests.conftest import tiny_config


def _train_eval_register(project, require_lift=False, **train_cfg):
    cfg = tiny_config(
        project, arch="cnn_tiny", wandb="disabled", require_lift=require_lift, **train_cfg
    )
    train(cfg, project)
    score = evaluate(cfg, project).metrics["test/acc"]
    return score, register(cfg, project)


def test_gate_promotes_first_and_better_refuses_worse(project):
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    # v1: barely trained -> champion by default
    weak, d1 = _train_eval_register(
        project, max_epochs=1, lr=1e-4, optimizer="sgd", scheduler="none"
    )
    assert d1.promoted and d1.version == "1" and d1.champion_before is None
    # v2: trained properly -> beats v1
    strong, d2 = _train_eval_register(project, max_epochs=15, lr=0.01)
    assert strong > weak + 0.2, (weak, strong)
    assert d2.promoted and d2.champion_before == "1"
    # v3: weak again -> refused; champion stays v2, candidate moves to v3
    _, d3 = _train_eval_register(project, max_epochs=1, lr=1e-4, optimizer="sgd", scheduler="none")
    assert not d3.promoted and "does not beat" in d3.reason

    name = "digits-cnn_tiny"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "3"
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 3
    champion = client.get_model_version(name, "2")
    assert float(champion.tags["test/acc"]) == pytest.approx(strong, abs=1e-6)
    assert champion.tags["test/acc"] == f"{strong:.6g}"  # as a person reads it, not float32's
    assert (project / "outputs/digits-cnn_tiny/registration.json").exists()


def test_gate_refuses_a_champion_that_loses_to_its_baseline(project, monkeypatch):
    """register.require_lift (the default): a model that logistic regression beats on the same
    split is registered but not made champion, and says why; turned off, the same run is."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    weak = {"max_epochs": 1, "lr": 1e-4, "optimizer": "sgd", "scheduler": "none"}
    _, d1 = _train_eval_register(project, require_lift=True, **weak)
    scores = json.loads((project / "outputs/digits-cnn_tiny/metrics.json").read_text())
    assert scores["test/lift"] < 0 < scores["test/baseline/acc"] - d1.value  # it does lose
    assert not d1.promoted and d1.champion_before is None
    assert "does not beat its classical baseline's" in d1.reason
    assert "register.require_lift" in d1.reason and "no champion yet" in d1.reason
    name = "digits-cnn_tiny"
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "1"
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias(name, "champion")

    monkeypatch.chdir(project)  # turned off, the same run is promoted
    cli = ["--set", "train.dataset=digits", "--set", "train.arch=cnn_tiny"]
    cli += [a for k, v in weak.items() for a in ("--set", f"train.{k}={v}")]
    result = CliRunner().invoke(app, ["register", *cli, "--set", "register.require_lift=false"])
    assert result.exit_code == 0, result.output
    assert "promoted to champion" in result.stdout
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"

    # on again, a better model is champion only if it also beats the baseline, and says so
    _, d3 = _train_eval_register(project, require_lift=True, max_epochs=15, lr=0.01)
    lift = json.loads((project / "outputs/digits-cnn_tiny/metrics.json").read_text())["test/lift"]
    assert d3.promoted == (lift > 0), (lift, d3.reason)
    assert (f"lift {lift:+.4f}" if lift > 0 else "does not beat its classical") in d3.reason


@pytest.mark.parametrize(
    "lift,promoted,fragment",
    [
        (0.02, True, "first; lift +0.0200 over its baseline"),
        (0.0, False, "does not beat its classical baseline's 0.9000 on the same split (test/lift"),
        (-0.1, False, "test/lift -0.1000): register.require_lift keeps it a candidate"),
        (float("nan"), False, "does not beat its classical baseline"),  # a diverged model
        (None, True, "first (no baseline score: not held to one)"),  # the GAN
    ],
)
def test_the_lift_rule_on_each_kind_of_score(lift, promoted, fragment):
    scores = {"test/acc": 0.9, "test/baseline/acc": 0.9}
    if lift is not None:
        scores["test/lift"] = lift
    ok, reason = beats_baseline(scores, "test/acc", 0.9 + (lift or 0), None, "first")
    assert ok is promoted and fragment in reason, reason
    assert ok or "there is no champion yet" in reason


@pytest.mark.parametrize(
    "value,than,mode,expected",
    [
        (0.9, None, "max", True),
        (0.9, 0.8, "max", True),
        (0.8, 0.8, "max", False),
        (0.7, 0.8, "max", False),
        (0.5, 0.8, "min", True),
        (0.9, 0.8, "min", False),
    ],
)
def test_better_respects_direction(value, than, mode, expected):
    assert better(value, than, mode) is expected


def test_predict_with_champion_and_clear_errors(project, monkeypatch):
    """The input is the digits' raw pixels (0..16, as prepared): the logged model scales them
    itself (assay.tracking.contract); pixels scaled to [0, 1] beforehand are now refused, see
    tests/test_contract.py."""
    _train_eval_register(project, max_epochs=10, lr=0.01)
    monkeypatch.chdir(project)
    test = np.load(project / "data/digits/test.npz")
    x, y = test["x"][:50], test["y"][:50]
    runner = CliRunner()

    for arr in (x, x[:, 0], x.reshape(50, -1)):  # (N,1,8,8), (N,8,8), (N,64) all accepted
        np.save(project / "x.npy", arr)
        result = runner.invoke(
            app,
            [
                "predict",
                "-m",
                "models:/digits-cnn_tiny@champion",
                "-i",
                "x.npy",
                "--output",
                "p.csv",
            ],
        )
        assert result.exit_code == 0, result.output
        pred = np.loadtxt(project / "p.csv", delimiter=",", skiprows=1)[:, 1]
        assert (pred == y).mean() > 0.6

    np.save(project / "bad.npy", np.zeros((3, 5, 5), np.float32))
    result = runner.invoke(
        app, ["predict", "-m", "models:/digits-cnn_tiny@champion", "-i", "bad.npy"]
    )
    assert result.exit_code == 2 and "does not fit the model's input (N, 1, 8, 8)" in result.stderr

    np.save(project / "txt.npy", np.array([["a"] * 64]))
    result = runner.invoke(
        app, ["predict", "-m", "models:/digits-cnn_tiny@champion", "-i", "txt.npy"]
    )
    assert result.exit_code == 2 and "not numeric" in result.stderr

    np.save(project / "x.npy", x)
    result = runner.invoke(app, ["predict", "-m", "models:/nope@champion", "-i", "x.npy"])
    assert result.exit_code == 2
    assert "cannot load model models:/nope@champion" in result.stderr
    assert "registered models: digits-cnn_tiny" in result.stderr

    result = runner.invoke(
        app, ["predict", "-m", "models:/digits-cnn_tiny@champion", "-i", "no.npy"]
    )
    assert result.exit_code == 2 and "no.npy does not exist" in result.stderr


def test_gate_keeps_the_champion_when_the_scores_are_of_other_data(project, monkeypatch):
    """A score on another test split ranks nothing: digits prepared again with another seed,
    a far better model is kept as candidate, the champion stays, and --force compares anyway."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    _, d1 = _train_eval_register(project, max_epochs=1, lr=1e-4, optimizer="sgd", scheduler="none")
    assert d1.promoted
    cfg = load_config(root=project)
    prepare("digits", cfg.prepare.model_copy(update={"seed": 1}), project)  # another split

    strong = tiny_config(
        project, arch="cnn_tiny", wandb="disabled", require_lift=False, max_epochs=15, lr=0.01
    )
    train(strong, project)
    evaluate(strong, project)
    d2 = register(strong, project)
    assert not d2.promoted and d2.reason.startswith("not compared: test/acc")
    assert "`assay register --force`" in d2.reason
    assert d2.value > d2.champion_value + 0.2  # it would have won on the number alone
    name = "digits-cnn_tiny"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(name, "candidate").version) == "2"
    saved = json.loads((project / "outputs" / name / "registration.json").read_text())
    assert saved["promoted"] is False and saved["reason"] == d2.reason

    monkeypatch.chdir(project)
    sets = ["--set", "train.dataset=digits", "--set", "train.arch=cnn_tiny"]
    sets += ["--set", "register.require_lift=false"]  # this test is about the data, not lift
    result = CliRunner().invoke(app, ["register", *sets, "--force"])
    assert result.exit_code == 0, result.output
    assert "promoted to champion" in result.stdout and "--force" in result.stdout
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"
