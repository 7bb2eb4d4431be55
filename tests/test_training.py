"""Training, tracked for real: an MLflow store in tmp_path checked through MlflowClient, and W&B's
offline run files on disk."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from assay.evaluation import evaluate
from assay.training import train
from tests.conftest import tiny_config


def _client(root):
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def test_train_logs_one_run_to_mlflow_and_wandb(project):
    cfg = tiny_config(project, max_epochs=3)
    cfg = cfg.model_copy(
        update={"tracking": cfg.tracking.model_copy(update={"system_metrics_interval": 0.2})}
    )
    result = train(cfg, project)
    run = _client(project).get_run(result.run_id)

    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("digits-cnn_tiny-")
    # what MLflow's UI shows as User and Source, and which metric chose the best epoch
    tags = run.data.tags
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
    assert tags["best_val.chosen_by"] == "val/loss (min)"
    assert 0 <= int(tags["best_val.epoch"]) < 3
    # MLflow's UI opens the experiment in its model-training view, not the GenAI one
    experiment = _client(project).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    # params, flattened
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    assert run.data.params["model.channels"] == "[4, 8]"
    assert run.data.params["data.n_train"] == str(
        json.loads((project / "data/digits/meta.json").read_text())["counts"]["train"]
    )
    # per-epoch metrics: one value per epoch, on one axis (step = epoch) with the refit's
    for key in ("val/acc", "train/loss"):
        steps = sorted(m.step for m in _client(project).get_metric_history(result.run_id, key))
        assert steps == [0, 1, 2], key
    assert "epoch" not in run.data.metrics  # the step says it
    # MLflow's system metrics, sampled while it trained (system_metrics_interval: 0.2 s here)
    cpu = _client(project).get_metric_history(result.run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0 <= m.value <= 100 for m in cpu)
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 100
    assert {"train/loss", "val/loss", "val/acc", "best_val/acc"} <= set(run.data.metrics)
    # provenance tags
    tags = run.data.tags
    assert tags["git.dirty"] in ("true", "false")
    assert "mlflow.source.git.commit" in tags
    assert len(tags["dvc.data_hash"]) == 32 and tags["params.digest"] == cfg.digest()
    # artifacts
    files = {a.path for a in _client(project).list_artifacts(result.run_id)}
    assert {"checkpoints", "learning_curve.png"} <= files  # top level: what Compare shows
    info = json.loads((project / "outputs/digits-cnn_tiny/model/run.json").read_text())
    assert info["model_uri"].startswith("models:/")
    # where the run's seconds went (bench/overhead.py reads them): each epoch, and the phases
    timings = info["timings"]
    assert len(timings["epochs"]) == 3 and all(s > 0 for s in timings["epochs"])
    phases = timings["phases"]
    assert {"data and model", "tracking start", "fit", "model logging"} <= set(phases)
    assert phases["fit"] >= sum(timings["epochs"])
    assert timings["started_at"] < timings["ended_at"] <= time.time()

    # W&B: a real offline run, naming the MLflow run, and the MLflow run naming it
    assert tags["wandb.run_id"] == result.wandb_id
    run_dirs = list((project / "wandb").glob(f"offline-run-*-{result.wandb_id}"))
    assert len(run_dirs) == 1 and (run_dirs[0] / f"run-{result.wandb_id}.wandb").stat().st_size > 0
    # W&B's offline transaction log (protobuf records): the config names the MLflow run and
    # the history holds the same metric keys.
    records = (run_dirs[0] / f"run-{result.wandb_id}.wandb").read_bytes()
    for needle in (result.run_id, "mlflow_run_id", "val/acc", "train/loss", run.info.run_name):
        assert needle.encode() in records, needle

    # outputs the DVC stage declares
    out = project / "outputs/digits-cnn_tiny"
    assert (out / "model/best.ckpt").exists()
    assert (out / "history.csv").read_text().count("\n") == 4  # header + 3 epochs
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_logged_model_has_signature_and_predicts(project):
    """The logged model is a pyfunc carrying its input contract (assay.tracking.contract): the
    input's shape, range and scale are in its metadata (the signature describes the output only:
    MLflow's input enforcement would refuse valid raw input), and it predicts on raw pixels."""
    import mlflow

    train(tiny_config(project, wandb="disabled"), project)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    info = json.loads((project / "outputs/digits-cnn_tiny/model/run.json").read_text())
    model_info = mlflow.models.get_model_info(info["model_uri"])
    assert list(model_info.signature.outputs.inputs[0].shape) == [-1, 10]
    contract = model_info.metadata["assay_input"]
    assert contract["shape"] == [1, 8, 8] and contract["range"] == [0, 16]
    assert contract["scale"] == 16
    model = mlflow.pyfunc.load_model(info["model_uri"])
    x = np.load(project / "data/digits/test.npz")["x"][:5]  # uint8 0..16, as prepared
    probs = model.predict(x)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_evaluate_writes_dvc_metrics_and_adds_them_to_the_run(project):
    cfg = tiny_config(project, max_epochs=8, arch="mlp_tiny", lr=0.01)
    result = train(cfg, project)
    scores = evaluate(cfg, project).metrics
    out = project / "outputs/digits-mlp_tiny"
    written = json.loads((out / "metrics.json").read_text())
    assert written["test/acc"] == pytest.approx(scores["test/acc"])
    assert written["n_test"] == 360
    assert (
        0.5 < scores["test/acc"] <= 1.0
    )  # a real score: 8 epochs of a tiny MLP, well above chance
    run = _client(project).get_run(result.run_id)
    assert run.data.metrics["test/acc"] == pytest.approx(scores["test/acc"])
    assert run.info.status == "FINISHED"
    lines = (out / "eval/confusion.csv").read_text().splitlines()
    assert lines[0] == "actual,predicted" and len(lines) == 361
    agree = sum(a == p for a, p in (ln.split(",") for ln in lines[1:])) / 360
    assert agree == pytest.approx(scores["test/acc"])


def test_crash_ends_failed_and_leaves_no_half_output(project):
    """A run that breaks mid-training ends FAILED (never RUNNING), keeps the traceback, and writes
    no outputs, not even the empty output folder; the error reaches the caller."""
    # damaged data fails before any run (tests/test_damaged_data.py); this fails inside fit()
    with pytest.raises(ValueError, match="logs no 'val/rmse'"):
        train(tiny_config(project, monitor="val/rmse:min"), project)
    client = _client(project)
    runs = client.search_runs([client.get_experiment_by_name("assay").experiment_id])
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert "error" in runs[0].data.tags
    assert not (project / "outputs").exists()  # no scratch folder, no empty outputs/<key>/
    assert list((project / "wandb").glob("offline-run-*"))  # the W&B run exists and was closed


def test_missing_data_is_a_clear_error_before_any_run(tmp_path):
    import shutil

    from tests.conftest import REPO

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    with pytest.raises(FileNotFoundError, match=r"not prepared: run `dvc repro prepare@digits`"):
        train(tiny_config(tmp_path), tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_monitor_picks_the_best_epoch_by_the_chosen_metric(project):
    result = train(tiny_config(project, max_epochs=3, monitor="val/acc:max"), project)
    info = json.loads((project / "outputs/digits-cnn_tiny/model/run.json").read_text())
    assert info["monitor"] == ["val/acc", "max"]
    history = (project / "outputs/digits-cnn_tiny/history.csv").read_text().splitlines()
    header, *rows = [line.split(",") for line in history]
    accs = [float(r[header.index("val/acc")]) for r in rows]
    assert result.metrics["val/acc"] == pytest.approx(max(accs))


def test_monitor_the_model_never_logs_fails_before_training(project):
    with pytest.raises(ValueError, match=r"logs no 'val/rmse'.*val/acc"):
        train(tiny_config(project, monitor="val/rmse:min"), project)
    assert not (project / "outputs/digits-cnn_tiny/model").exists()


def test_an_experiment_made_before_is_given_its_kind(project):
    """One made by an earlier Assay (or by hand) gets the tag the first time a run uses it."""
    from assay.tracking import experiment_id

    client = _client(project)
    made = client.create_experiment("made-before")
    assert "mlflow.experimentKind" not in client.get_experiment(made).tags
    uri = f"sqlite:///{project / 'mlflow.db'}"
    assert experiment_id(client, "made-before", project, uri) == made
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_learning_curve_names_the_metrics_it_draws():
    """Not "accuracy" for an RMSE or a ROC-AUC (the right-hand panel's y label)."""
    from assay.plots import metric_axis_label

    rows = [{"epoch": 0, "train/loss": 1.0, "val/loss": 1.1, "val/rmse": 0.9}]
    assert metric_axis_label(rows) == "rmse"
    rows = [{"epoch": 0, "val/loss": 1.0, "val/roc_auc": 0.9, "train/acc": 0.5, "val/acc": 0.6}]
    assert metric_axis_label(rows) == "acc, roc_auc"
    assert metric_axis_label([{"epoch": 0, "train/loss": 1.0}]) == "(no metric besides loss)"


def test_the_mlflow_logger_logs_each_epoch_at_its_step_once(project):
    """Lightning hands a logger the epoch among the metrics: it becomes the step. Metrics an
    earlier attempt of the run logged at an epoch (a resumed Ray fit re-runs epochs) are not
    logged again, key by key."""
    from assay.tracking import ensure_store, experiment_id, run_loggers

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = ensure_store(uri)
    run_id = client.create_run(experiment_id(client, "assay", project, uri)).info.run_id
    spec = {"experiment": "assay", "uri": uri, "run_id": run_id, "wandb_id": None}
    (logger,) = run_loggers(spec, wandb=False, logged={"val/acc": 1})
    logger.log_metrics({"val/acc": 0.5, "train/loss": 0.9, "epoch": 1}, step=57)
    logger.log_metrics({"val/acc": 0.7, "train/loss": 0.8, "epoch": 2}, step=114)
    steps = {
        k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
        for k in ("val/acc", "train/loss", "epoch")
    }
    assert steps == {
        "val/acc": [(2, pytest.approx(0.7))],  # epoch 1's was logged before
        "train/loss": [(1, pytest.approx(0.9)), (2, pytest.approx(0.8))],
        "epoch": [],
    }
    # Lightning ends a run from its logger (FAILED on an interrupt): the run's end is Assay's
    # alone, or a process killed between the two writes leaves the wrong status behind.
    logger.finalize("failed")
    logger.finalize("success")
    assert client.get_run(run_id).info.status == "RUNNING"
