"""Sweeps for real: an Optuna study in a SQLite file (or the machine's PostgreSQL), trials on a
local Ray, pruning (in-process and under Ray Train DDP), four trials writing to one store at once.
Every trial is a real digits training with its MLflow child run. Recovery from killed trials and
drivers: tests/test_sweep_recovery.py."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from optuna_dashboard import get_note

from assay.config import ConfigError
from assay.lineage import trace
from assay.sweep import SweepError, load_sweep, run_sweep
from tests.sweeps_support import (
    BASE,
    Lines,
    child_runs,
    mlflow_client,
    optuna_study,
    trial_errors,
    write_sweep,
)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"space": {"train.lr_typo": {"type": "float", "low": 0.1, "high": 1}}},
            "space.train.lr_typo: no such setting",
        ),
        (  # an architecture's settings are typed: a key in a section the base leaves unset too
            {"space": {"train.models.gru_tiny.dropuot": {"type": "float", "low": 0, "high": 1}}},
            "space.train.models.gru_tiny.dropuot: no such setting",
        ),
        (
            {"space": {"train.models.vgg.depth": {"type": "int", "low": 1, "high": 3}}},
            "space.train.models.vgg.depth: no such setting",
        ),
        (
            {"space": {"train.lr": {"type": "float", "low": 0.0, "high": 1, "log": True}}},
            "log scale needs low > 0",
        ),
        ({"space": {"train.lr": {"type": "float", "low": 1.0, "high": 0.1}}}, "above high"),
        (
            {"space": {"train.optimizer": {"type": "categorical", "choices": ["adam", "lion"]}}},
            "space.train.optimizer: value 'lion' gives: train.optimizer",
        ),
        ({"set": ["train.refit=true"]}, "train.refit: true in a sweep"),
        ({"sampler": {"name": "bayes"}}, "sweep.sampler.name"),
        ({"pruner": {"name": "asha", "reduction_factor": 1}}, "sweep.pruner.reduction_factor"),
        ({"trials": None}, "give a budget"),
        ({"objective": {"metric": "acc"}}, "sweep.objective.metric"),
        ({"storage": "journal:/tmp/j.log"}, "journal storage has no heartbeat"),
        (
            {
                "space": {
                    "train.lr": {"type": "float", "low": 0.1, "high": 1, "when": {"train.nope": 1}}
                }
            },
            "when: train.nope",
        ),
    ],
)
@pytest.mark.bare
def test_a_bad_sweep_file_is_refused_before_anything_runs(project, change, expected):
    path = write_sweep(project, **change)
    with pytest.raises(ConfigError) as e:
        load_sweep(path, root=project)
    assert expected in str(e.value), str(e.value)
    assert str(path) in str(e.value)
    assert not (project / "optuna.db").exists() and not (project / "mlflow.db").exists()


@pytest.mark.bare
def test_damaged_data_is_named_before_the_study_or_any_run(project):
    from assay.data import DataError

    blob = (project / "data/digits/train.npz").read_bytes()
    (project / "data/digits/train.npz").write_bytes(blob[: len(blob) // 2])
    s = load_sweep(write_sweep(project, "cut", trials=1), root=project)
    with pytest.raises(DataError, match=r"train.npz: cut short .* `dvc repro prepare@digits`"):
        run_sweep(s, console=Lines())
    assert not (project / "optuna.db").exists() and not (project / "mlflow.db").exists()
    assert not (project / "outputs").exists()


def test_a_study_is_not_put_in_mlflows_database(project):
    """MLflow's store as the study's storage: refused before Optuna writes a table into it (both
    keep an alembic_version table, and Optuna would take MLflow's for its own)."""
    import sqlalchemy

    from assay.sweep.study import open_storage

    url = f"sqlite:///{project / 'mlflow.db'}"
    before = set(sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names())
    assert "alembic_version" in before and "experiments" in before
    with pytest.raises(SweepError, match=r"holds another program's tables .*sqlite:///optuna.db"):
        open_storage(url)
    assert set(sqlalchemy.inspect(sqlalchemy.create_engine(url)).get_table_names()) == before
    open_storage(f"sqlite:///{project / 'optuna.db'}")  # a database of its own: fine


def test_conditional_space_samples_a_parameter_only_with_its_architecture(project):
    from assay.sweep import suggest

    path = write_sweep(
        project,
        space={
            "train.arch": {"type": "categorical", "choices": ["cnn_tiny", "mlp_tiny"]},
            "train.models.cnn_tiny.dropout": {
                "type": "float",
                "low": 0,
                "high": 0.3,
                "when": {"train.arch": "cnn_tiny"},
            },
            "train.models.mlp_tiny.hidden_sizes": {
                "type": "categorical",
                "choices": [[16], [32, 16]],
                "when": {"train.arch": "mlp_tiny"},
            },
        },
    )
    s = load_sweep(path, root=project)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(12):
        params = suggest(study.ask(), s.cfg.space, s.base.model_dump())
        arch = params["train.arch"]
        seen.add(arch)
        other = "mlp_tiny" if arch == "cnn_tiny" else "cnn_tiny"
        assert not any(f".{other}." in k for k in params)
        if arch == "mlp_tiny":
            assert params["train.models.mlp_tiny.hidden_sizes"] in ([16], [32, 16])
    assert seen == {"cnn_tiny", "mlp_tiny"}


# ----------------------------------------------------------------------------- real sweeps
PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_study():
    """A study name on the machine's PostgreSQL (the multi-machine path), deleted afterwards."""
    import uuid

    import sqlalchemy

    try:
        with sqlalchemy.create_engine(PG).connect():
            pass
    except Exception:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG}")
        pytest.skip(f"no PostgreSQL at {PG}")
    name = f"pg-{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=PG)


@pytest.mark.slow
def test_sweep_tracks_a_parent_and_one_child_per_trial_and_registers_the_best(
    project, pg_study, no_ray_left
):
    """Two trials at a time on a study in the real PostgreSQL server, as on a cluster. (This
    and test_a_study_on_postgresql_is_shared_by_parallel_trials ran the same sweep, one on
    SQLite and one on PostgreSQL; the other sweeps here and in test_sweep_recovery.py keep the
    default SQLite study.)"""
    name = pg_study
    s = load_sweep(write_sweep(project, name, trials=3, parallel=2, storage=PG), root=project)
    out = Lines()
    result = run_sweep(s, console=out)

    study = optuna.load_study(study_name=name, storage=PG)
    trials = study.get_trials()
    errors = trial_errors(trials)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, (errors, out.lines[-40:])
    assert study.metric_names == ["val/acc"]  # optuna-dashboard's name for the objective
    assert result.storage == PG and not (project / "optuna.db").exists()
    client = mlflow_client(project)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.train.lr"] == str(study.best_params["train.lr"])
    children = child_runs(client, result.parent_run_id)
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert sorted(by_trial) == [0, 1, 2] and len(children) == 3
    for t in trials:
        run = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.info.status == "FINISHED" and run.data.tags["trial.state"] == "complete"
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"])
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 3
        assert sorted(t.intermediate_values) == [0, 1, 2]
        # the trial's value is its best epoch's objective, as logged in MLflow
        assert run.data.metrics["best_val/acc"] == pytest.approx(t.value)
        # optuna-dashboard's note on the trial links to its MLflow run
        link = (
            f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        )
        note = get_note(optuna.Trial(study, t._trial_id))
        assert f"]({link}?workflowType=machine_learning)" in note
    assert f"runs/{result.parent_run_id}?workflowType=machine_learning)" in get_note(study)
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    for plot in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert {f"{plot}.html", f"{plot}.png"} <= artifacts
    sweep_out = project / "outputs/sweeps" / name
    best = yaml.safe_load((sweep_out / "best_params.yaml").read_text())
    assert best["params"] == study.best_params and best["best_value"] == study.best_value
    # the sweep's outputs name its run and the best trial's (issue 19: artifacts name their run)
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    assert best["mlflow_parent_run_id"] == result.parent_run_id
    assert best["best_mlflow_run_id"] == best_run
    summary = json.loads((sweep_out / "metrics.json").read_text())
    assert summary["mlflow_parent_run_id"] == result.parent_run_id
    html = (sweep_out / "plots/optimization_history.html").read_text()
    assert "plotly" in html and "<script" in html
    # the best trial went through the champion gate under <dataset>-<arch>
    version = client.get_model_version_by_alias("digits-cnn_tiny", "champion")
    assert version.run_id == study.best_trial.user_attrs["mlflow_run_id"]
    assert result.registration["promoted"] is True
    # its lineage names the study and trial it came from (tests/test_lineage.py: the rest)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    chain = trace("models:/digits-cnn_tiny@champion", project, uri)
    assert chain["sweep"] == {
        "study": name,
        "trial": str(study.best_trial.number),
        "parent_run": result.parent_run_id,
    }
    assert version.tags["lineage.sweep_study"] == name
    assert version.tags["lineage.sweep_trial"] == str(study.best_trial.number)
    # W&B: one offline run per trial (job type "trial") plus the sweep's ("sweep"); W&B 0.31
    # reads its run files only in Go, so the group is checked as the bytes it wrote
    files = {
        f.parent.name.rsplit("-", 1)[1]: f.read_bytes()
        for f in (project / "wandb").glob("offline-run-*/run-*.wandb")
    }
    wandb_ids = {r.data.tags["wandb.run_id"] for r in children}
    assert wandb_ids < set(files) and len(files) == 4
    assert all(b"trial" in files[i] and name.encode() in files[i] for i in wandb_ids)
    assert sum(f"sweep-{name}".encode() in data for data in files.values()) == 1
    assert any("complete" in line and "new best" in line for line in out.lines)
    shown = subprocess.run(
        [sys.executable, "-m", "assay.cli", "sweep", "status", name, "--storage", PG],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and shown.stdout.count("complete") >= 3, shown.stdout
    # running the same study again without --resume is refused
    again = write_sweep(project, name, storage=PG)
    with pytest.raises(SweepError, match="--resume"):
        run_sweep(load_sweep(again, root=project))


@pytest.mark.slow
def test_pruned_trials_stop_early_and_say_so_everywhere(project, no_ray_left):
    # the threshold pruner stops every trial below 0.99 val/acc after its first epoch
    path = write_sweep(
        project, "pr", epochs=4, trials=2, pruner={"name": "threshold", "lower": 0.99}
    )
    out = Lines()
    result = run_sweep(load_sweep(path, root=project), console=out)
    study = optuna_study(project, "pr")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["pruned_at_epoch"] == 0 for t in study.trials)
    client = mlflow_client(project)
    for run in child_runs(client, result.parent_run_id):
        assert run.data.tags["trial.state"] == "pruned"
        assert run.data.tags["trial.pruned_at_epoch"] == "0"
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 1  # stopped early
        wandb_id = run.data.tags["wandb.run_id"]
        wb = list((project / "wandb").glob(f"offline-run-*-{wandb_id}"))
        assert wb and b"pruned" in (wb[0] / f"run-{wandb_id}.wandb").read_bytes()
    assert sum("pruned at epoch 0" in line for line in out.lines) == 2
    # no trial complete, so no best: the sweep failed (`assay sweep` exits 1)
    assert result.error.startswith("no trial completed (0 failed, 2 pruned)"), result.error
    assert client.get_run(result.parent_run_id).info.status == "FAILED"
    assert not (project / "outputs/sweeps/pr/best_params.yaml").exists()


@pytest.mark.slow
def test_pruning_works_when_each_trial_trains_on_two_ray_workers(project, no_ray_left):
    """optuna#6043: Optuna's Lightning callback breaks under DDP. Rank 0 reports here, and every
    rank stops at the epoch the pruner chose (a rank that kept going would hang the group)."""
    path = write_sweep(
        project,
        "ddp",
        epochs=4,
        trials=1,
        set=[*BASE, "train.max_epochs=4", "train.workers=2", "tracking.wandb.mode=disabled"],
        pruner={"name": "threshold", "lower": 0.99},
    )
    result = run_sweep(load_sweep(path, root=project))
    trial = optuna_study(project, "ddp").trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 0
    assert list(trial.intermediate_values) == [0]
    (run,) = child_runs(mlflow_client(project), result.parent_run_id)
    assert run.data.tags["ray.workers"] == "2" and run.data.tags["trial.state"] == "pruned"


@pytest.mark.slow
@pytest.mark.bare
def test_four_parallel_trials_share_the_default_stores_without_losing_a_metric(
    project,
    no_ray_left,
):
    """Four trials start at once and write to one SQLite MLflow store and one Optuna file; every
    epoch of every trial is there. (One round of four trials: it was two, eight trials, which
    added a second round of the same writes to the suite. Five epochs each, so that the four
    overlap although their workers finish importing at different times.)"""
    epochs = 5
    path = write_sweep(
        project,
        "four",
        epochs=epochs,
        trials=4,
        parallel=4,
        cpus_per_trial=0.5,
        set=[*BASE, f"train.max_epochs={epochs}", "tracking.wandb.mode=disabled"],
    )
    proc = subprocess.run(
        [sys.executable, "-m", "assay.cli", "sweep", "-e", str(path)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=500,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    assert "database is locked" not in text
    study = optuna_study(project, "four")
    errors = trial_errors(study.trials)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4, (errors, text[-3000:])
    starts = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    overlap = max(sum(s <= a < e for s, e in starts) for a, _ in starts)
    assert overlap == 4  # four ran at once
    client = mlflow_client(project)
    for t in study.trials:
        run_id = t.user_attrs["mlflow_run_id"]
        for key in ("val/acc", "train/loss"):  # each epoch once, at step = epoch
            steps = sorted(m.step for m in client.get_metric_history(run_id, key))
            assert steps == list(range(epochs)), key
        assert sorted(t.intermediate_values) == list(range(epochs))
