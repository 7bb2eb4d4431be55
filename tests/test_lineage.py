"""`assay lineage` with real git, MLflow and W&B offline files: a registered model back to its run,
commit, params, data and raw source, and data forward to its runs; what changed since is said.
With real DVC (the hash from dvc.lock): tests/test_pipeline.py's end-to-end test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from assay.cli import app
from assay.evaluation import evaluate
from assay.lineage import trace
from assay.registry import register
from assay.tracking import files_md5
from assay.training import train
from tests.conftest import free_port, stop_group, tiny_config


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _lineage(root: Path, monkeypatch, *args: str):
    monkeypatch.chdir(root)
    return CliRunner().invoke(app, ["lineage", *args])


@pytest.fixture
def registered(project):
    """A project in a real git repository (params.yaml committed, clean), with a tiny digits
    CNN trained (W&B offline), scored and registered: (project, config, run id)."""
    _git(project, "init", "-q")
    _git(project, "add", "params.yaml")
    _git(project, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "params")
    cfg = tiny_config(project, arch="cnn_tiny", wandb="offline")
    result = train(cfg, project)
    evaluate(cfg, project)
    register(cfg, project)
    return project, cfg, result.run_id


def test_lineage_walks_every_link_and_its_json_round_trips(registered, monkeypatch):
    project, cfg, run_id = registered
    uri = f"sqlite:///{project / 'mlflow.db'}"
    done = _lineage(project, monkeypatch, "--json", "models:/digits-cnn_tiny@champion")
    assert done.exit_code == 0, done.output
    chain = json.loads(done.output)
    assert chain == trace("models:/digits-cnn_tiny@champion", project, uri)  # round trip

    assert chain["model"]["name"] == "digits-cnn_tiny" and chain["model"]["version"] == "1"
    assert chain["model"]["aliases"] == ["candidate", "champion"]
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert chain["run"]["id"] == run_id and chain["run"]["status"] == "FINISHED"
    assert chain["run"]["metrics"]["test/acc"] == run.data.metrics["test/acc"]
    assert chain["wandb"]["run_id"] == run.data.tags["wandb.run_id"]
    assert chain["wandb"]["dir_exists"] and Path(chain["wandb"]["dir"]).is_dir()
    head = _git(project, "rev-parse", "HEAD")
    assert chain["git"] == {
        "commit": head,
        "dirty": False,
        "dirty_files": None,
        "in_repository": True,
    }
    assert chain["params"]["digest"] == cfg.digest() == chain["params"]["config_digest"]
    assert chain["params"]["config"] == cfg.model_dump(mode="json")
    meta = json.loads((project / "data/digits/meta.json").read_text())
    data = chain["data"]
    assert data["stage"] == "prepare@digits" and data["hash_source"] == "computed"
    assert data["hash"] == files_md5(project / "data/digits") and data["matches"]
    assert data["source"] == meta["source"] and data["source_recorded"]
    assert data["source"]["origin"] and len(data["source"]["sha256"]) == 64
    assert {s["name"]: s["rows"] for s in data["splits"]} == {
        f"digits-{k}": v for k, v in meta["counts"].items()
    }
    assert chain["sweep"] is None and chain["ray"] is None
    assert chain["problems"] == []

    # the registry version carries the chain itself
    tags = client.get_model_version("digits-cnn_tiny", "1").tags
    assert tags["lineage.run_id"] == run_id and tags["lineage.data_hash"] == data["hash"]
    assert tags["lineage.git_commit"] == chain["git"]["commit"]
    assert tags["lineage.params_digest"] == cfg.digest()
    assert tags["lineage.wandb_run"] == chain["wandb"]["run_id"]
    assert tags["lineage.parent_model"] == ""  # trained from scratch; the field is in place
    assert "lineage.sweep_study" not in tags and "lineage.ray_run" not in tags

    # the same chain from the run and from its outputs folder; and the tree
    assert trace(f"runs:/{run_id}", project, uri)["data"] == data
    assert trace("outputs/digits-cnn_tiny", project, uri)["run"] == chain["run"]
    done = _lineage(project, monkeypatch, "models:/digits-cnn_tiny/1")
    text = " ".join(done.output.split())
    assert done.exit_code == 0 and "prepare@digits" in text and "no problems" in text


def test_lineage_keeps_the_trained_params_and_says_what_changed_since(registered, monkeypatch):
    project, cfg, run_id = registered
    uri = f"sqlite:///{project / 'mlflow.db'}"
    # the other way: the prepared folder to its run and version
    done = _lineage(project, monkeypatch, "--json", "--data", "data/digits")
    found = json.loads(done.output)
    assert [r["id"] for r in found["runs"]] == [run_id]
    by_hash = json.loads(
        _lineage(project, monkeypatch, "--json", "--data", found["hashes"][0]).output
    )
    assert [r["id"] for r in by_hash["runs"]] == [run_id]
    assert [(v["name"], v["version"], v["aliases"]) for v in found["versions"]] == [
        ("digits-cnn_tiny", "1", ["candidate", "champion"])
    ]

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = 0.123
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    chain = trace("models:/digits-cnn_tiny@champion", project, uri)
    assert chain["params"]["config"]["train"]["lr"] == cfg.train.lr != 0.123
    assert chain["problems"] == []  # the model's own tree was clean; today's edit is not it

    kept = (project / "data/digits/meta.json").read_bytes()
    with open(project / "data/digits/meta.json", "a") as f:
        f.write("\n")
    chain = trace("models:/digits-cnn_tiny@champion", project, uri)
    assert not chain["data"]["matches"]
    assert any("data/digits now hashes to" in p for p in chain["problems"]), chain["problems"]
    done = _lineage(project, monkeypatch, "models:/digits-cnn_tiny@champion")
    text = " ".join(done.output.split())  # the tree wraps at the console's width
    assert done.exit_code == 0 and "does not match" in text and "1 problem" in text

    # a split file that is not the one the run read, though the folder was not prepared again
    # (the folder hash here is computed, so it moves too; under DVC it would not: dvc.lock keeps
    # the hash DVC recorded, and only the split's own sha256 tells)
    (project / "data/digits/meta.json").write_bytes(kept)
    train_npz = project / "data/digits/train.npz"
    train_npz.write_bytes(train_npz.read_bytes() + b"\0")
    chain = trace("models:/digits-cnn_tiny@champion", project, uri)
    assert any("data/digits/train.npz has sha256" in p for p in chain["problems"]), chain
    assert not chain["data"]["matches"]

    done = _lineage(project, monkeypatch, "--data", "data/nothing")
    assert done.exit_code == 2 and "neither a folder here nor a data hash" in done.output

    MlflowClient(uri).delete_run(run_id)
    chain = trace(f"runs:/{run_id}", project, uri)
    assert any("is deleted" in p for p in chain["problems"]), chain["problems"]


def test_lineage_refuses_what_names_nothing(project, monkeypatch):
    done = _lineage(project, monkeypatch, "outputs/nothing")
    assert done.exit_code == 2 and "models:/NAME@ALIAS" in done.output
    done = _lineage(project, monkeypatch)
    assert done.exit_code == 2 and "--data" in done.output


@pytest.mark.slow
def test_mlflow_server_shows_the_runs_dataset_inputs(registered):
    """What the MLflow UI shows of the run, through the REST API the UI reads: its three data
    inputs, with the data hash as digest and the pinned raw file as source."""
    project, _, run_id = registered
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    log = open(project / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        ["assay", "mlflow-server", "--port", str(port)],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/get?run_id={run_id}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((project / "server.log").read_text()[-3000:])
                time.sleep(0.5)
    finally:
        stop_group(server)
        log.close()
    inputs = body["run"]["inputs"]["dataset_inputs"]
    contexts = {i["tags"][0]["value"]: i["dataset"] for i in inputs}
    assert set(contexts) == {"training", "validation", "testing"}
    source = json.loads((project / "data/digits/meta.json").read_text())["source"]
    for ds in contexts.values():
        assert ds["digest"] == files_md5(project / "data/digits")
        assert ds["source_type"] == "assay_pinned" and json.loads(ds["source"]) == source
