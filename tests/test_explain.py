"""`assay explain` and the attributions `evaluate` logs (captum): they must mean something, which
the deletion test checks on a trained digits model; bad requests are refused before any compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from assay import tracking
from assay.cli import app
from assay.evaluation import evaluate
from assay.objectives import attribution
from assay.registry import register
from assay.training import train
from tests.conftest import family_cfg, tiny_config


@pytest.fixture
def digits_model(project):
    """A digits CNN trained well enough to be explained (~0.9 test accuracy), evaluated and
    registered as digits-cnn_tiny@champion."""
    cfg = tiny_config(project, wandb="disabled", max_epochs=8, lr=0.01)
    run_id = train(cfg, project).run_id
    acc = evaluate(cfg, project).metrics["test/acc"]
    assert acc > 0.85, acc
    register(cfg, project)
    return cfg, run_id


def test_removing_the_top_attributed_pixels_hurts_more_than_removing_random_ones(
    project, digits_model
):
    """The deletion test: on 200 test digits, setting the 10% of pixels that Integrated
    Gradients ranks highest to black drops the predicted class's probability more than setting
    a random 10% to black, on average and for most images."""
    cfg, run_id = digits_model
    uri = f"sqlite:///{project / 'mlflow.db'}"
    net = tracking.load_net(f"runs:/{run_id}/model", uri)  # the logged head: probabilities
    x = torch.from_numpy(np.load(project / "data/digits/test.npz")["x"][:200]).float()
    x = x / 16.0  # the contract's scaling (digits: 0..16)
    a = attribution.attribute(net, x, "pixels", probabilities=True)
    # IG's completeness: the attributions add up to the probability's change from black
    assert np.abs(a.delta).mean() < 0.05, np.abs(a.delta).mean()
    logits_net = net.net  # the classifier under the logged softmax head
    top, rand = attribution.deletion_drop(logits_net, x, a.ig, a.target, 0.10)
    assert top.mean() > rand.mean() + 0.1, (top.mean(), rand.mean())
    assert (top > rand).mean() > 0.7, (top > rand).mean()
    # a saliency map is there too, one value per pixel
    assert a.saliency.shape == x.shape and (a.saliency >= 0).all()


def test_assay_explain_writes_attributions_for_the_champion_and_evaluate_logs_some(
    project, digits_model, monkeypatch
):
    cfg, run_id = digits_model
    monkeypatch.chdir(project)
    raw = np.load(project / "data/digits/test.npz")["x"][:5]  # the user's 0..16 pixels
    np.save(project / "five.npy", raw.astype(np.uint8))
    model = "models:/digits-cnn_tiny@champion"
    r = CliRunner().invoke(
        app, ["explain", "-m", model, "-i", "five.npy", "-o", "why", "--limit", "3"]
    )
    assert r.exit_code == 0, r.output
    saved = np.load(project / "why/attributions.npz")
    assert saved["ig"].shape == (3, 1, 8, 8) and saved["saliency"].shape == (3, 1, 8, 8)
    assert (project / "why/explain.png").stat().st_size > 5000
    assert "IG delta" in r.stdout
    # the class explained is the one `assay predict` answers
    r = CliRunner().invoke(app, ["predict", "-m", model, "-i", "five.npy", "--output", "p.npy"])
    assert r.exit_code == 0, r.output
    assert (np.load(project / "p.npy")[:3].argmax(1) == saved["target"]).all()
    # evaluate logged a few test digits' attributions to the run
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert "explain.png" in {f.path for f in client.list_artifacts(run_id)}


def test_explain_refuses_what_it_cannot_explain_before_any_compute(
    project, digits_model, monkeypatch
):
    monkeypatch.chdir(project)
    model = "models:/digits-cnn_tiny@champion"
    (project / "texts.txt").write_text("a fine film\n")
    r = CliRunner().invoke(app, ["explain", "-m", model, "-i", "texts.txt"])
    assert r.exit_code == 2 and "expected a .npy or .npz file" in r.output, r.output
    np.save(project / "big.npy", np.full((2, 8, 8), 200.0))
    r = CliRunner().invoke(app, ["explain", "-m", model, "-i", "big.npy"])
    assert r.exit_code == 2 and "0..16" in r.output, r.output
    r = CliRunner().invoke(app, ["explain", "-m", model, "-i", "big.npy", "--limit", "0"])
    assert r.exit_code == 2 and "at least 1" in r.output, r.output
    assert not (project / "explain").exists()  # nothing written


@pytest.mark.slow
def test_explain_a_text_classifier_and_a_forecaster(fproject, monkeypatch):
    """Tokens of a review highlighted in an HTML page; a window's steps and features for a
    forecaster; an autoencoder is refused (its answer is no class or forecast)."""
    monkeypatch.chdir(fproject)
    for dataset, arch in (("rotten_tomatoes", "lstm_tiny"), ("elecdemand", "rnn_tiny")):
        cfg = family_cfg(fproject, dataset, arch)
        train(cfg, fproject)
        evaluate(cfg, fproject)
        register(cfg, fproject)
    (fproject / "reviews.txt").write_text("a moving , beautifully acted film\ndull and tedious\n")
    r = CliRunner().invoke(
        app, ["explain", "-m", "models:/rotten_tomatoes-lstm_tiny@champion", "-i", "reviews.txt"]
    )
    assert r.exit_code == 0, r.output
    page = (fproject / "explain/explain.html").read_text()
    assert "beautifully" in page and "tedious" in page and "<span" in page
    ig = np.load(fproject / "explain/attributions.npz")["ig"]
    assert ig.shape[0] == 2 and np.isfinite(ig).all() and (ig != 0).any()
    # the evaluate step logged a few test reviews' attributions as a page and a picture
    assert (fproject / "outputs/rotten_tomatoes-lstm_tiny/eval/explain.html").exists()

    windows = np.load(fproject / "data/elecdemand/test.npz")["x"][:2]
    np.save(fproject / "windows.npy", windows)
    r = CliRunner().invoke(
        app,
        ["explain", "-m", "models:/elecdemand-rnn_tiny@champion", "-i", "windows.npy", "-o", "f"],
    )
    assert r.exit_code == 0, r.output
    ig = np.load(fproject / "f/attributions.npz")["ig"]
    assert ig.shape == windows.shape and (ig != 0).any()
    features = ("Demand", "Temperature", "WorkDay", "tod_sin", "tod_cos")
    assert any(f in r.stdout for f in features), r.stdout  # what mattered most, by name

    cfg = family_cfg(fproject, "digits", "autoencoder_tiny")
    train(cfg, fproject)
    evaluate(cfg, fproject)
    register(cfg, fproject)
    np.save(fproject / "d.npy", np.zeros((1, 8, 8)))
    r = CliRunner().invoke(
        app, ["explain", "-m", "models:/digits-autoencoder_tiny@champion", "-i", "d.npy"]
    )
    assert r.exit_code == 2 and "is a reconstruction model" in r.output, r.output
