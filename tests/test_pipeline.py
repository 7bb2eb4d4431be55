"""The real pipeline: DVC in a temporary git repo runs `dvc repro` with a tiny preset, end to end,
into a real MLflow store and W&B offline files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from assay.lineage import trace
from tests.conftest import REPO, needs_browser, shot

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


@pytest.fixture
def repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / item, repo / item if repo.exists() else _mk(repo) / item)
    for folder in ("experiments", "models", "platform"):
        shutil.copytree(REPO / folder, repo / folder, ignore=ignore)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["datasets"] = ["digits"]
    params["register"]["require_lift"] = False  # the tiny run loses to logistic regression
    # a run not named <dataset>-<arch>: its outputs and registered model are its own
    params["runs"] = {
        "digits-tiny": {
            "dataset": "digits",
            "arch": "cnn_tiny",
            "max_epochs": 3,
            "batch_size": 64,
        }
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "test@assay.local"], repo)
    _run(["git", "config", "user.name", "assay test"], repo)
    _run(["dvc", "init", "-q"], repo)
    shutil.copy(REPO / ".dvc/config", repo / ".dvc/config")  # the project's: plots drawn offline
    _plots_of("digits-mlp", "digits-tiny", repo / "dvc.yaml")
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "tiny pipeline"], repo)
    return repo


def _plots_of(run: str, into: str, dvc_yaml: Path) -> None:
    """dvc.yaml's plots for `run` only, drawn from `into`'s outputs."""
    spec = yaml.safe_load(dvc_yaml.read_text())
    plots = []
    for p in spec["plots"]:
        name, props = (p, None) if isinstance(p, str) else next(iter(p.items()))
        if isinstance(props, dict) and isinstance(props.get("y"), dict):
            props["y"] = {f.replace(run, into): c for f, c in props["y"].items() if run in f}
        elif run not in name:
            continue
        name = name.replace(run, into)
        plots.append(name if props is None else {name: props})
    spec["plots"] = plots
    dvc_yaml.write_text(yaml.safe_dump(spec, sort_keys=False))


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_dvc_repro_end_to_end(repo):
    _run(["dvc", "repro"], repo)

    # DVC metrics: test/acc for the run
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = next(iter(shown.values()))["data"]["outputs/digits-tiny/metrics.json"]["data"]
    assert 0.1 < metrics["test/acc"] <= 1.0
    assert not (repo / "outputs/digits-cnn_tiny").exists()  # the run's key, not <data>-<arch>

    # `assay results`: the model beside its baseline on the same split, read from DVC's metrics
    table = _run(["assay", "results", "--markdown"], repo).stdout.splitlines()
    row = next(line for line in table if line.startswith("| digits-tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["digits-tiny", "acc (higher is better)"]
    assert float(cells[2]) == pytest.approx(metrics["test/acc"], abs=1e-4)
    assert cells[3].startswith("logistic regression on pixels, C=")
    assert float(cells[4]) == pytest.approx(metrics["test/baseline/acc"], abs=1e-4)
    assert float(cells[5]) == pytest.approx(metrics["test/lift"], abs=1e-4)
    scored = time.strftime(
        "%Y-%m-%d", time.gmtime((repo / "outputs/digits-tiny/eval/run.json").stat().st_mtime)
    )
    assert cells[7] == scored  # the day of its evaluation

    # MLflow: the run, with the data hash DVC recorded; the registered champion
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    data_md5 = lock["stages"]["prepare@digits"]["outs"][0]["md5"]
    assert runs[0].data.tags["dvc.data_hash"] == data_md5
    assert runs[0].data.tags["git.dirty"] == "false"
    assert runs[0].data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    champion = client.get_model_version_by_alias("digits-tiny", "champion")
    assert str(champion.version) == "1" and champion.run_id == runs[0].info.run_id
    assert list((repo / "wandb").glob(f"offline-run-*-{runs[0].data.tags['wandb.run_id']}"))

    # Lineage from the registry back through DVC (tests/test_lineage.py has the rest): the hash
    # dvc.lock recorded for the prepared data, checked by DVC against the workspace
    chain = trace("models:/digits-tiny@champion", repo, uri)
    assert chain["data"]["hash"] == data_md5 and chain["data"]["hash_source"] == "dvc.lock"
    assert chain["data"]["matches"] and chain["problems"] == [], chain["problems"]
    meta = repo / "data/digits/meta.json"
    kept = meta.read_bytes()
    meta.write_bytes(kept + b"\n")
    chain = trace("models:/digits-tiny@champion", repo, uri)
    assert not chain["data"]["matches"]
    assert "data/digits has changed since dvc.lock" in " ".join(chain["problems"])
    meta.write_bytes(kept)

    # DVC's plots page: Vega inside it, no CDN (the plots_page stage; .dvc/config names it)
    _run(["dvc", "plots", "show"], repo)
    html = (repo / "dvc_plots/index.html").read_text()
    assert "cdn.jsdelivr" not in html and "window.vegaEmbed" in html

    # Nothing changed: a no-op, fast
    started = time.perf_counter()
    done = _run(["dvc", "repro"], repo)
    assert "up to date" in done.stdout
    assert time.perf_counter() - started < 10

    # The graph is the code each stage runs (tests/test_dvc_graph.py): an edit to the CLI makes
    # nothing stale; one to the scoring code makes evaluate stale, and not train
    with open(repo / "platform/assay/cli/pipeline.py", "a") as f:
        f.write("\n# an edit\n")
    assert "up to date" in _run(["dvc", "status"], repo).stdout
    with open(repo / "platform/assay/evaluation.py", "a") as f:
        f.write("\n# an edit\n")
    stale = json.loads(_run(["dvc", "status", "--json"], repo).stdout)
    assert set(stale) == {"evaluate@digits-tiny"}, stale
    _run(["git", "checkout", "--", "platform"], repo)

    # A DVC experiment with a changed param retrains, evaluates and registers v2
    _run(["dvc", "exp", "run", "-S", "train.lr=0.01"], repo)
    runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
    assert len(runs) == 2
    assert sorted(r.data.params["train.lr"] for r in runs) == sorted(
        ["0.01", str(yaml.safe_load((REPO / "params.yaml").read_text())["train"]["lr"])]
    )
    assert len(client.search_model_versions("name='digits-tiny'")) == 2


def test_bad_params_stop_the_pipeline_before_any_output(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["optimizer"] = "adamx"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["dvc", "repro", "train@digits-tiny"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    assert "train.optimizer: got 'adamx'" in done.stdout + done.stderr
    assert not (repo / "outputs").exists() and not (repo / "mlflow.db").exists()


def test_sweep_stage_writes_best_params_dvc_tracks_and_reruns_fresh(repo):
    (repo / "sweeps").mkdir()
    stage = yaml.safe_load((REPO / "sweeps/dvc.yaml").read_text())
    stage["vars"] = [{"sweeps": {"tiny": "digits"}}]
    (repo / "sweeps/dvc.yaml").write_text(yaml.safe_dump(stage, sort_keys=False))
    sweep = {
        "sweep": {
            "set": [
                "train.dataset=digits",
                "train.arch=cnn_tiny",
                "train.max_epochs=2",
                "train.batch_size=64",
                "tracking.wandb.mode=disabled",
            ],
            "objective": {"metric": "val/acc", "direction": "maximize"},
            "space": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
            "pruner": {"name": "none"},
            "trials": 2,
            "parallel": 1,
        }
    }
    path = repo / "experiments/sweeps/tiny.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "a sweep"], repo)
    _run(["dvc", "repro", "sweeps/dvc.yaml"], repo)

    best = yaml.safe_load((repo / "outputs/sweeps/tiny/best_params.yaml").read_text())
    assert best["study"] == "tiny" and set(best["params"]) == {"train.lr"}
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo).stdout)
    metrics = next(iter(shown.values()))["data"]["outputs/sweeps/tiny/metrics.json"]["data"]
    assert metrics["trials_complete"] == 2 and metrics["best_value"] == best["best_value"]
    status = _run(["assay", "sweep", "status", "tiny"], repo).stdout
    assert status.count("complete") >= 2
    assert "up to date" in _run(["dvc", "repro", "sweeps/dvc.yaml"], repo).stdout

    # a changed sweep file runs a fresh study of the same name (not a refusal, not a resume,
    # which would count the old study's two trials too)
    sweep["sweep"]["trials"] = 1
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    _run(["dvc", "repro", "sweeps/dvc.yaml"], repo)
    metrics = json.loads((repo / "outputs/sweeps/tiny/metrics.json").read_text())
    assert metrics["trials_complete"] == 1


@needs_browser
def test_dvc_plots_page_draws_every_plot_offline(repo, page):
    from playwright.sync_api import expect

    _run(["dvc", "repro", "train@digits-tiny", "evaluate@digits-tiny", "plots_page"], repo)
    _run(["dvc", "plots", "show"], repo)
    page.context.set_offline(True)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.goto((repo / "dvc_plots/index.html").as_uri())
    plots = page.locator("body > div[id]")
    assert plots.count() == 4  # learning curves, confusion (Vega); the two PNGs
    vega = [plots.nth(i) for i in range(plots.count()) if not plots.nth(i).locator("img").count()]
    assert len(vega) == 2
    for div in vega:  # vega-embed replaced the spec's script with the drawing
        expect(div.locator("svg, canvas").first).to_be_visible()
    texts = page.evaluate("[...document.querySelectorAll('svg text')].map(t => t.textContent)")
    for label in ("epoch", "loss (train/loss, val/loss)", "predicted class", "true class"):
        assert label in texts, label
    for image in page.locator("img").all():
        assert image.evaluate("i => i.complete && i.naturalWidth") > 100
    assert not page.errors, page.errors
    assert all(u.startswith(("file:", "data:", "blob:")) for u in asked), asked
    shot(page, "dvc-plots")
