"""`assay serve`: the champion on Ray Serve (2 replicas, batching) answers as `assay predict` and
`mlflow models serve` do on raw MNIST pixels, refuses out-of-contract input as MLflow's scoring
server does, batches concurrent requests, and leaves nothing running when stopped."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.config import load_config
from assay.data import fetch, prepare
from assay.evaluation import evaluate
from assay.registry import register
from assay.training import train
from tests.conftest import free_port, mlflow_serving, post_json, serving, tiny_config

MODEL = "models:/mnist-mlp_tiny@champion"


def _post(port: int, payload: dict) -> tuple[int, dict, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read()), dict(r.headers)


@pytest.mark.network  # MNIST from its wheel
def test_assay_serve_answers_as_predict_batches_and_stops_clean(project, monkeypatch, no_ray_left):
    """An MNIST model, served on the raw 0..255 pixels a user has: `assay serve` (Ray Serve, 2
    replicas) and `mlflow models serve` answer as `assay predict` does, with the right classes."""
    cfg = load_config(root=project)
    fetch("mnist", cfg.fetch, project)
    prepare("mnist", cfg.prepare, project)
    cfg = tiny_config(
        project, dataset="mnist", arch="mlp_tiny", wandb="disabled", max_epochs=1, batch_size=256
    )
    train(cfg, project)
    evaluate(cfg, project)
    register(cfg, project)
    test = np.load(project / "data/mnist/test.npz")
    raw, labels = test["x"][:40].astype(np.uint8), test["y"][:40]  # pixels 0..255, as MNIST has
    assert raw.max() > 200
    np.save(project / "x.npy", raw)
    monkeypatch.chdir(project)
    r = CliRunner().invoke(app, ["predict", "-m", MODEL, "-i", "x.npy", "--output", "p.npy"])
    assert r.exit_code == 0, r.output
    expected = np.load(project / "p.npy")
    assert (expected.argmax(1) == labels).mean() >= 0.8  # the right classes from raw pixels
    np.save(project / "bad.npy", np.full((1, 28, 28), 300, np.int64))
    refused = CliRunner().invoke(app, ["predict", "-m", MODEL, "-i", "bad.npy"])
    assert refused.exit_code == 2
    with mlflow_serving(project, MODEL, project / "mlflow-serve.log") as mport:
        code, body = post_json(mport, {"inputs": raw.tolist()})
        assert code == 200
        np.testing.assert_allclose(np.asarray(body["predictions"]), expected, atol=1e-6)

    port = free_port()
    cmd = [sys.executable, "-m", "assay.cli", "serve", MODEL, "--replicas", "2"]
    cmd += ["--port", str(port), "--max-batch-size", "16", "--batch-wait-ms", "20"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ready = f"http://127.0.0.1:{port}/ping"
    with serving(cmd, project, ready, project / "serve.log", env, wait=240):
        # /ping answers once a replica is up; the command says so once both are
        deadline = time.monotonic() + 120
        while "2 replica(s)" not in (project / "serve.log").read_text():
            assert time.monotonic() < deadline, (project / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        status, body, _ = _post(port, {"inputs": raw.tolist()})
        assert status == 200
        np.testing.assert_allclose(np.asarray(body["predictions"]), expected, atol=1e-6)
        status, body, _ = _post(port, {"instances": raw[:3].tolist()})
        assert status == 200 and np.argmax(body["predictions"], 1).tolist() == (
            expected[:3].argmax(1).tolist()
        )
        # out of contract: HTTP 400 with the contract's message, as `assay predict` says it
        code, err = post_json(port, {"inputs": np.full((1, 28, 28), 300).tolist()})
        assert code == 400 and err["error_code"] == "INVALID_PARAMETER_VALUE"
        said = " ".join(refused.stderr.split())
        assert "pixel values span [300, 300]" in err["message"], err
        assert " ".join(err["message"].split()) in said, (err["message"], said)
        code, err = post_json(port, {"rows": [1]})
        assert code == 400 and err["error_code"] == "BAD_REQUEST"
        with pytest.raises(urllib.error.HTTPError) as nope:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)
        assert nope.value.code == 404

        # 40 one-image requests from 16 threads: each gets its own answer; some share a pass
        def one(k: int):
            return k, *_post(port, {"inputs": raw[k : k + 1].tolist()})

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(len(raw))))
        batches = []
        for k, status, body, headers in answers:
            assert status == 200
            np.testing.assert_allclose(body["predictions"][0], expected[k], atol=1e-6)
            batches.append(int(headers["assay-batch-requests"]))
        assert max(batches) > 1, batches  # batching happened
        assert max(batches) <= 16
    log = (project / "serve.log").read_text()
    assert "2 replica(s)" in log and "Traceback" not in log, log[-3000:]


def test_assay_serve_refuses_a_bad_model_or_port_before_starting_ray(project, monkeypatch):
    from assay import distributed

    def no_ray(*a, **k):
        raise AssertionError("Ray started for a request that was refused")

    monkeypatch.setattr(distributed, "ray_session", no_ray)
    monkeypatch.chdir(project)
    r = CliRunner().invoke(app, ["serve", "models:/nope@champion", "--port", "0"])
    assert r.exit_code == 2 and "cannot load model models:/nope@champion" in r.stderr, r.output
    r = CliRunner().invoke(app, ["serve", MODEL, "--replicas", "0"])
    assert r.exit_code == 2 and "--replicas" in r.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", MODEL, "--port", str(port)])
    assert r.exit_code == 2 and f"port {port} is taken" in r.stderr, r.output
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")  # another machine's cluster
    r = CliRunner().invoke(app, ["serve", MODEL, "--port", "0"])
    assert r.exit_code == 2 and "10.1.2.3:6379 is another machine" in r.stderr, r.output
