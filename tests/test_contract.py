"""The logged model carries its input contract (assay.tracking.contract): `assay predict`,
`mlflow.pyfunc.load_model(...).predict` and `mlflow models serve` take the same raw input (the
data set's own pixels: digits 0..16), give the same answer, and refuse the same input with the
same message: pixels out of range, pixels scaled already, NaN and inf (naming the rows)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.evaluation import evaluate
from assay.tracking.contract import ContractError
from assay.training import train
from tests.conftest import mlflow_serving, post_json, tiny_config


def _trained(project):
    """A digits CNN trained, evaluated (its test/acc) and logged; MLflow pointed at its store."""
    cfg = tiny_config(project, wandb="disabled", max_epochs=10, lr=0.01)
    train(cfg, project)
    acc = evaluate(cfg, project).metrics["test/acc"]
    uri = f"sqlite:///{project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    info = json.loads((project / "outputs/digits-cnn_tiny/model/run.json").read_text())
    return info["model_uri"], acc


def _cli(project, monkeypatch, model_uri, x, name="x.npy"):
    """`assay predict` on the array x: (exit code, predicted classes or None, one-line stderr)."""
    monkeypatch.chdir(project)
    np.save(project / name, x)
    r = CliRunner().invoke(
        app, ["predict", "-m", model_uri, "-i", name, "--output", "p.csv"], catch_exceptions=False
    )
    pred = None if r.exit_code else np.loadtxt(project / "p.csv", delimiter=",", skiprows=1)
    pred = None if pred is None else pred[:, 1]
    return r.exit_code, pred, " ".join(r.stderr.split())  # rich wraps long lines


def _refused(pyfunc, x) -> str:
    with pytest.raises(ContractError) as e:
        pyfunc.predict(x)
    return " ".join(e.value.message.split())


def test_raw_pixels_give_the_same_classes_through_assay_and_mlflow(project, monkeypatch):
    model_uri, acc = _trained(project)
    test = np.load(project / "data/digits/test.npz")
    x, y = test["x"], test["y"]  # uint8 0..16, as prepared
    assert x.dtype == np.uint8 and x.max() == 16

    code, pred, _ = _cli(project, monkeypatch, model_uri, x)
    assert code == 0
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    probs = pyfunc.predict(x)
    assert np.array_equal(pred, probs.argmax(1))
    # the scale is right: the logged model scores what `assay evaluate` scored
    assert (pred == y).mean() == pytest.approx(acc, abs=1e-6)  # test/acc is a float32
    # shape variants and float pixels in the raw range give the same answer
    for variant in (x[:, 0], x.reshape(len(x), -1), x.astype(np.float64)):
        assert np.array_equal(pyfunc.predict(variant).argmax(1), pred)

    # out of contract: the same refusal through both doors
    cases = {
        "above 16": (x.astype(np.int64) * 16, "outside 0..16"),  # MNIST-like 0..255 pixels
        "scaled already": (x.astype(np.float32) / 16, "look scaled already"),
    }
    for what, (bad, message) in cases.items():
        code, _, err = _cli(project, monkeypatch, model_uri, bad)
        refusal = _refused(pyfunc, bad)
        assert code == 2 and message in err and refusal in err, (what, err, refusal)


def test_nan_and_inf_rows_are_refused_by_name(project, monkeypatch):
    model_uri, _ = _trained(project)
    x = np.load(project / "data/digits/test.npz")["x"][:30].astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    x[17, 0, 5, 1] = np.inf
    code, _, err = _cli(project, monkeypatch, model_uri, x)
    assert code == 2 and "rows 3, 17 contain NaN or inf" in err, err
    assert "rows 3, 17 contain NaN or inf" in _refused(mlflow.pyfunc.load_model(model_uri), x)
    assert not (project / "p.csv").exists()  # nothing written for refused input


@pytest.mark.slow
def test_mlflow_models_serve_answers_as_assay_predict(project, monkeypatch, tmp_path):
    """`mlflow models serve` on the logged model: raw digits pixels as JSON ints get the classes
    `assay predict` gives; pixels above 16 get an HTTP 400 with the contract's message."""
    model_uri, _ = _trained(project)
    x = np.load(project / "data/digits/test.npz")["x"][:40]
    code, pred, _ = _cli(project, monkeypatch, model_uri, x)
    assert code == 0
    with mlflow_serving(project, model_uri, tmp_path / "serve.log") as port:
        status, body = post_json(port, {"inputs": x.tolist()})  # JSON ints, 0..16
        assert status == 200, body
        assert np.array_equal(np.array(body["predictions"]).argmax(1), pred)

        bad = x.astype(np.int64) * 16
        status, body = post_json(port, {"inputs": bad.tolist()})
        expected = _refused(mlflow.pyfunc.load_model(model_uri), bad)
        assert status == 400 and expected in " ".join(body["message"].split()), body
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
