"""`assay ui` and what users see through it, in a real browser: MLflow's UI and optuna-dashboard
on a store that a real training run, its evaluation and registration, and a real sweep filled.

The browser is Debian's Chromium (tests/conftest.py's `page`); without it the browser tests skip
and say so."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from assay.evaluation import evaluate
from assay.registry import register
from assay.sweep import load_sweep, run_sweep
from assay.training import train
from tests.conftest import copy_params, free_port, needs_browser, shot, stop_group, tiny_config
from tests.sweeps_support import Lines, write_sweep

ASSAY = str(Path(sys.executable).with_name("assay"))


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_assay_ui_refuses_a_taken_port_before_starting_anything(project):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [ASSAY, "ui", "--mlflow-port", str(port), "--dashboard-port", "0"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"port {port}" in done.stderr and "--mlflow-port 0" in done.stderr
    assert not (project / "optuna.db").exists()  # refused before anything started


@pytest.fixture(scope="module")
def filled(tmp_path_factory, digits_data):
    """A project whose store holds a trained, evaluated and registered run (the champion) and a
    two-trial sweep, served by `assay ui`; stopped at the end, every process of it checked gone."""
    root = tmp_path_factory.mktemp("ui")
    copy_params(root)
    shutil.copytree(digits_data, root / "data")
    mport = free_port()  # before the sweep: its trials' links point at it
    (root / "params.yaml").write_text(
        (root / "params.yaml")
        .read_text()
        .replace("ui: http://127.0.0.1:5000", f"ui: http://127.0.0.1:{mport}")
    )
    cfg = tiny_config(root, max_epochs=3)
    result = train(cfg, root)
    evaluate(cfg, root)
    decision = register(cfg, root)
    sweep = run_sweep(
        load_sweep(write_sweep(root, "ui", trials=2, epochs=2), root=root), console=Lines()
    )
    dport = free_port()
    errors = open(root / "ui.err", "w")  # noqa: SIM115  closed below
    proc = subprocess.Popen(
        [ASSAY, "ui", "--dashboard-port", str(dport)],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=errors,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        assert "Ctrl-C" in "".join(lines), (root / "ui.err").read_text()[-3000:]
        family = psutil.Process(proc.pid).children(recursive=True)
        yield {
            "root": root,
            "mlflow": f"http://127.0.0.1:{mport}",
            "dashboard": f"http://127.0.0.1:{dport}",
            "printed": "".join(lines),
            "run": result,
            "decision": decision,
            "sweep": sweep,
            "family": family,
        }
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # what Ctrl-C or `kill` does
        try:
            code = proc.wait(60)
        finally:
            stop_group(proc)
            errors.close()
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert code == 0 and not alive, [p.cmdline() for p in alive]


@pytest.mark.slow
def test_assay_ui_serves_mlflow_and_optuna_dashboard_on_the_project_stores(filled):
    view = "runs?workflowType=machine_learning"  # the experiment's runs, in the model-training view
    assert f"MLflow UI:        {filled['mlflow']}/#/experiments/1/{view}" in filled["printed"]
    assert f"optuna-dashboard: {filled['dashboard']}" in filled["printed"]
    names = {" ".join(p.cmdline()[:3]) for p in filled["family"]}
    assert any("mlflow server" in n for n in names) and any("optuna-dashboard" in n for n in names)
    found = json.loads(
        _get(f"{filled['mlflow']}/api/2.0/mlflow/runs/get?run_id={filled['run'].run_id}")
    )
    assert found["run"]["info"]["status"] == "FINISHED"
    studies = json.loads(_get(f"{filled['dashboard']}/api/studies"))["study_summaries"]
    assert [s["study_name"] for s in studies] == ["ui"]


@pytest.mark.slow
@needs_browser
def test_mlflow_run_page_shows_the_run_its_metrics_and_learning_curve(filled, page):
    from playwright.sync_api import expect

    run = filled["run"]
    client_run = json.loads(
        _get(f"{filled['mlflow']}/api/2.0/mlflow/runs/get?run_id={run.run_id}")
    )["run"]
    exp = client_run["info"]["experiment_id"]
    name = client_run["info"]["run_name"]
    view = "?workflowType=machine_learning"  # what `assay ui` prints and the links carry
    page.goto(f"{filled['mlflow']}/#/experiments/{exp}/runs{view}")
    expect(page.get_by_text(name).first).to_be_visible()
    expect(page.get_by_text("Model training").first).to_be_visible()
    shot(page, "mlflow-experiment")
    page.goto(f"{filled['mlflow']}/#/experiments/{exp}/runs/{run.run_id}{view}")
    expect(page.get_by_text(name).first).to_be_visible()
    for metric in ("val/acc", "best_val/acc", "test/acc"):
        expect(page.get_by_text(metric, exact=True).first).to_be_visible()
    expect(page.get_by_text("val/loss (min)").first).to_be_visible()  # best_val.chosen_by
    shot(page, "mlflow-run")
    page.goto(f"{filled['mlflow']}/#/experiments/{exp}/runs/{run.run_id}/artifacts{view}")
    page.get_by_text("learning_curve.png", exact=True).first.click()
    image = page.locator("img[src^='blob:'], img[src*='learning_curve.png']").first
    expect(image).to_be_visible()
    assert image.evaluate("i => i.complete && i.naturalWidth") > 100  # the PNG loaded
    shot(page, "mlflow-artifacts")


@pytest.mark.slow
@needs_browser
def test_mlflow_registry_page_shows_the_champion(filled, page):
    from playwright.sync_api import expect

    name = filled["decision"].name
    page.goto(f"{filled['mlflow']}/#/models/{name}")
    expect(page.get_by_text(name).first).to_be_visible()
    expect(page.get_by_text(re.compile("champion")).first).to_be_visible()
    shot(page, "mlflow-registry")


@pytest.mark.slow
@needs_browser
def test_optuna_dashboard_names_the_objective_and_links_trials_to_mlflow(filled, page):
    from playwright.sync_api import expect

    studies = json.loads(_get(f"{filled['dashboard']}/api/studies"))["study_summaries"]
    study_id = studies[0]["study_id"]
    page.goto(f"{filled['dashboard']}/dashboard/studies/{study_id}")
    expect(page.get_by_text("val/acc").first).to_be_visible()  # not "Objective 0"
    expect(page.get_by_text("Objective 0")).to_have_count(0)
    shot(page, "optuna-study")
    page.goto(f"{filled['dashboard']}/dashboard/studies/{study_id}/trials")
    link = page.locator(f"a[href^='{filled['mlflow']}/#/experiments/']").first
    expect(link).to_be_visible()
    shot(page, "optuna-trial")
    page.goto(link.get_attribute("href"))  # the trial's run, in MLflow's UI
    expect(page.get_by_text("val/acc", exact=True).first).to_be_visible()
