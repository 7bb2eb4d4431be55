"""Sweeps for real: an Optuna study in a SQLite file, trials on a local Ray, pruning (in-process
and under Ray Train DDP), the driver killed with SIGKILL and resumed, four trials writing to one
store at once. Every trial is a real digits training with its MLflow child run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from assay.config import ConfigError
from assay.sweep import SweepError, load_sweep, run_sweep
from tests.test_ray import _ray_processes, no_ray_left  # noqa: F401  (fixture)

BASE = [
    "train.dataset=digits",
    "train.arch=cnn_tiny",
    "train.batch_size=64",
    "train.early_stopping_patience=0",
    "train.scheduler=none",
]


def _write(project: Path, name: str = "s", **sweep) -> Path:
    body = {
        "set": [*BASE, f"train.max_epochs={sweep.pop('epochs', 3)}"],
        "study": name,
        "objective": {"metric": "val/acc", "direction": "maximize"},
        "space": {
            "train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
            "train.models.cnn_tiny.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "pruner": {"name": "none"},
        "trials": 3,
        "parallel": 1,
        **sweep,
    }
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"sweep": body}, sort_keys=False))
    return path


def _client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def _study(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def _children(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_experiment_by_name("assay").experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")


def _retry_of(t) -> int | None:
    """The trial this one retries (Optuna's own record of a heartbeat-stale trial's retry)."""
    with warnings.catch_warnings():  # experimental in Optuna since 2.8, and still the way
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(t)


def _trial_processes() -> list:
    return [p for p in _ray_processes() if "run_trial" in " ".join(p.info["cmdline"] or [])]


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, text: str = "", **_: object) -> None:
        self.lines.append(str(text))


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
def test_a_bad_sweep_file_is_refused_before_anything_runs(project, change, expected):
    path = _write(project, **change)
    with pytest.raises(ConfigError) as e:
        load_sweep(path, root=project)
    assert expected in str(e.value), str(e.value)
    assert str(path) in str(e.value)
    assert not (project / "optuna.db").exists() and not (project / "mlflow.db").exists()


def test_damaged_data_is_named_before_the_study_or_any_run(project):
    from assay.data import DataError

    blob = (project / "data/digits/train.npz").read_bytes()
    (project / "data/digits/train.npz").write_bytes(blob[: len(blob) // 2])
    s = load_sweep(_write(project, "cut", trials=1), root=project)
    with pytest.raises(DataError, match=r"train.npz: cut short .* `dvc repro prepare@digits`"):
        run_sweep(s, console=Lines())
    assert not (project / "optuna.db").exists() and not (project / "mlflow.db").exists()
    assert not (project / "outputs").exists()


def test_conditional_space_samples_a_parameter_only_with_its_architecture(project):
    from assay.sweep import suggest

    path = _write(
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
@pytest.mark.slow
def test_sweep_tracks_a_parent_and_one_child_per_trial_and_registers_the_best(
    project,
    no_ray_left,  # noqa: F811
):
    s = load_sweep(_write(project, "lr", trials=3, parallel=2), root=project)
    out = Lines()
    result = run_sweep(s, console=out)

    study = _study(project, "lr")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    client = _client(project)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.train.lr"] == str(study.best_params["train.lr"])
    children = _children(client, result.parent_run_id)
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert sorted(by_trial) == [0, 1, 2] and len(children) == 3
    for t in trials:
        run = by_trial[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.info.status == "FINISHED" and run.data.tags["trial.state"] == "complete"
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"])
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 3
        # the trial's value is its best epoch's objective, as logged in MLflow
        assert run.data.metrics["best_val/acc"] == pytest.approx(t.value)
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    for name in ("optimization_history", "param_importances", "parallel_coordinate"):
        assert {f"plots/{name}.html", f"plots/{name}.png"} <= artifacts
    sweep_out = project / "outputs/sweeps/lr"
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
    # W&B: one offline run per trial (job type "trial") plus the sweep's ("sweep"); W&B 0.31
    # reads its run files only in Go, so the group is checked as the bytes it wrote
    files = {
        f.parent.name.rsplit("-", 1)[1]: f.read_bytes()
        for f in (project / "wandb").glob("offline-run-*/run-*.wandb")
    }
    wandb_ids = {r.data.tags["wandb.run_id"] for r in children}
    assert wandb_ids < set(files) and len(files) == 4
    assert all(b"trial" in files[i] and b"lr" in files[i] for i in wandb_ids)
    assert sum(b"sweep-lr" in data for data in files.values()) == 1
    assert any("complete" in line and "new best" in line for line in out.lines)
    # running the same study again without --resume is refused
    with pytest.raises(SweepError, match="--resume"):
        run_sweep(load_sweep(_write(project, "lr"), root=project))


@pytest.mark.slow
def test_pruned_trials_stop_early_and_say_so_everywhere(project, no_ray_left):  # noqa: F811
    # the threshold pruner stops every trial below 0.99 val/acc after its first epoch
    path = _write(project, "pr", epochs=4, trials=2, pruner={"name": "threshold", "lower": 0.99})
    out = Lines()
    result = run_sweep(load_sweep(path, root=project), console=out)
    study = _study(project, "pr")
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["pruned_at_epoch"] == 0 for t in study.trials)
    client = _client(project)
    for run in _children(client, result.parent_run_id):
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
def test_pruning_works_when_each_trial_trains_on_two_ray_workers(project, no_ray_left):  # noqa: F811
    """optuna#6043: Optuna's Lightning callback breaks under DDP. Rank 0 reports here, and every
    rank stops at the epoch the pruner chose (a rank that kept going would hang the group)."""
    path = _write(
        project,
        "ddp",
        epochs=4,
        trials=1,
        set=[*BASE, "train.max_epochs=4", "train.workers=2", "tracking.wandb.mode=disabled"],
        pruner={"name": "threshold", "lower": 0.99},
    )
    result = run_sweep(load_sweep(path, root=project))
    trial = _study(project, "ddp").trials[0]
    assert trial.state == TrialState.PRUNED and trial.user_attrs["pruned_at_epoch"] == 0
    assert list(trial.intermediate_values) == [0]
    (run,) = _children(_client(project), result.parent_run_id)
    assert run.data.tags["ray.workers"] == "2" and run.data.tags["trial.state"] == "pruned"


@pytest.mark.slow
def test_killed_driver_resumes_the_same_study_without_losing_or_doubling_a_trial(
    project,
    no_ray_left,  # noqa: F811
):
    path = _write(project, "kill", epochs=40, trials=5, parallel=2, heartbeat=2)
    cmd = [sys.executable, "-m", "assay.cli", "sweep", "-e", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(project / "driver.log", "wb")  # noqa: SIM115
    driver = subprocess.Popen(cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        # One trial done and two training (their MLflow runs open): kill the driver now. (A
        # trial killed before it opened its run has no run to check; on a loaded machine that
        # window is seconds long.) Read with sqlite3, read-only: opening the study with Optuna
        # while the driver creates its tables races the driver's schema migration.
        db = project / "optuna.db"
        while time.time() < deadline:
            time.sleep(0.5)
            if not db.exists():
                continue
            try:
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                    states = [r[0] for r in con.execute("SELECT state FROM trials")]
                    training = con.execute(
                        "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a "
                        "ON a.trial_id = t.trial_id WHERE t.state = 'RUNNING' "
                        "AND a.key = 'mlflow_run_id'"
                    ).fetchone()[0]
            except sqlite3.Error:  # the tables are being created
                continue
            if states.count("COMPLETE") >= 1 and training == 2:
                break
        else:
            pytest.fail("the sweep never had a trial done and two running")
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        # The trials die with their driver (each watches its pid)...
        deadline = time.time() + 15
        while time.time() < deadline and _trial_processes():
            time.sleep(0.5)
        assert not _trial_processes()
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
        # ...but a SIGKILLed driver's local Ray leaves its agents behind for a while (they poll
        # for their raylet; `ray stop` would end them). End them here.
        for p in _ray_processes():
            with contextlib.suppress(psutil.Error):
                p.kill()
    killed = _study(project, "kill")
    running = [t.number for t in killed.get_trials() if t.state == TrialState.RUNNING]
    assert len(running) == 2

    done = subprocess.run(
        [*cmd, "--resume"], cwd=project, env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    trials = _study(project, "kill").get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(finished) == 5  # all requested trials, none counted twice
    # The trials the kill interrupted stopped beating: Optuna failed them and queued their
    # parameters again (RetryHeartbeatStaleTrialCallback), each retried once.
    assert sorted(t.number for t in failed) == running, done.stdout
    assert "marked failed" in done.stdout, done.stdout
    retried = {_retry_of(t): t for t in trials if _retry_of(t) is not None}
    assert sorted(retried) == running  # with the same parameters
    for number, retry in retried.items():
        assert retry.params == trials[number].params
        assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    client = _client(project)
    parent = killed.user_attrs["mlflow_parent_run_id"]
    children = _children(client, parent)
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    assert len(children) == len(by_trial) == len(trials)  # one to one, no duplicate runs
    status = {"complete": "FINISHED", "pruned": "FINISHED", "fail": "KILLED"}
    for t in trials:
        run = by_trial[t.number]
        assert run.info.status == status[t.state.name.lower()], t.number
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
    assert client.get_run(parent).info.status == "FINISHED"


@pytest.mark.slow
def test_a_trial_whose_process_is_killed_is_failed_by_its_heartbeat_and_retried(
    project,
    no_ray_left,  # noqa: F811
):
    """Optuna's own recovery, with the driver alive: the trial's Ray worker is SIGKILLed mid-fit;
    its heartbeat stops, Optuna fails it and queues its parameters again, the driver starts a
    worker for them, and the sweep ends with its budget met and no MLflow run left RUNNING."""
    import threading

    path = _write(project, "stale", epochs=20, trials=2, parallel=1, heartbeat=1)
    killed: list[int] = []

    def kill_first_trial() -> None:
        deadline = time.time() + 200
        while time.time() < deadline and not killed:
            time.sleep(0.3)
            with contextlib.suppress(Exception):
                (t0, *_) = _study(project, "stale").get_trials(deepcopy=False)
                if t0.intermediate_values and t0.state == TrialState.RUNNING:
                    for p in _trial_processes():
                        p.kill()
                        killed.append(p.pid)

    killer = threading.Thread(target=kill_first_trial, daemon=True)
    killer.start()
    lines = Lines()
    result = run_sweep(load_sweep(path, root=project), console=lines)
    killer.join(5)
    assert killed, "trial 0 never ran long enough to be killed"
    text = "\n".join(lines.lines)
    trials = _study(project, "stale").get_trials()
    first, *rest = trials
    assert first.state == TrialState.FAIL and "error" not in first.user_attrs, text
    (retry,) = [t for t in rest if _retry_of(t) == 0]
    assert retry.params == first.params and retry.state == TrialState.COMPLETE, text
    assert "a trial worker stopped" in text and "(retrying trial 0)" in text, text
    assert result.counts["complete"] == 2 and result.error is None
    client = _client(project)
    runs = {int(r.data.tags["optuna.trial"]): r for r in _children(client, result.parent_run_id)}
    assert sorted(runs) == [t.number for t in trials]
    assert runs[0].info.status == "KILLED" and runs[0].data.tags["trial.state"] == "failed"
    assert all(runs[t.number].info.status == "FINISHED" for t in rest)


@pytest.mark.slow
def test_resume_fails_and_retries_a_running_trial_that_never_beat(project, no_ray_left):  # noqa: F811
    """A trial left RUNNING without a single heartbeat (killed in the instant after its ask, or
    left by an Assay without heartbeats) is one Optuna would never fail: `--resume` gives it a
    beat, so it goes stale like any other, and retries it."""
    path = _write(project, "never", epochs=2, trials=1, heartbeat=1)
    run_sweep(load_sweep(path, root=project), console=Lines())
    ghost = _study(project, "never").ask()  # RUNNING, no heartbeat: a plain storage
    sweep = load_sweep(path, [("sweep.trials", 2)], root=project)
    lines = Lines()
    result = run_sweep(sweep, resume=True, console=lines)
    trials = _study(project, "never").get_trials()
    assert trials[ghost.number].state == TrialState.FAIL, lines.lines
    (retry,) = [t for t in trials if _retry_of(t) == ghost.number]
    assert retry.state == TrialState.COMPLETE
    assert result.counts["complete"] == 2 and "marked failed" in "\n".join(lines.lines)


@pytest.mark.slow
def test_four_parallel_trials_share_the_default_stores_without_losing_a_metric(
    project,
    no_ray_left,  # noqa: F811
):
    path = _write(
        project,
        "four",
        epochs=5,
        trials=8,
        parallel=4,
        cpus_per_trial=0.5,
        set=[*BASE, "train.max_epochs=5", "tracking.wandb.mode=disabled"],
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
    study = _study(project, "four")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 8
    starts = sorted((t.datetime_start, t.datetime_complete) for t in study.trials)
    overlap = max(sum(s <= a < e for s, e in starts) for a, _ in starts)
    assert overlap == 4  # four ran at once
    client = _client(project)
    for t in study.trials:
        run_id = t.user_attrs["mlflow_run_id"]
        assert len(client.get_metric_history(run_id, "val/acc")) == 5
        epochs = sorted({m.value for m in client.get_metric_history(run_id, "epoch")})
        assert epochs == [0, 1, 2, 3, 4]
        assert len(client.get_metric_history(run_id, "train/loss")) == 5
        assert sorted(t.intermediate_values) == [0, 1, 2, 3, 4]


PG = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_up() -> bool:
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(PG).connect():
            return True
    except Exception:
        return False


@pytest.mark.slow
def test_a_study_on_postgresql_is_shared_by_parallel_trials(project, no_ray_left):  # noqa: F811
    """The multi-machine path: the study in a real PostgreSQL server (the machine's own)."""
    if not _pg_up():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG}")
        pytest.skip(f"no PostgreSQL at {PG}")
    import uuid

    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = _write(
        project,
        name,
        trials=3,
        parallel=2,
        storage=PG,
        set=[*BASE, "train.max_epochs=2", "tracking.wandb.mode=disabled"],
    )
    try:
        result = run_sweep(load_sweep(path, root=project))
        study = optuna.load_study(study_name=name, storage=PG)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
        assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials)
        assert result.storage == PG and not (project / "optuna.db").exists()
        assert len(_children(_client(project), result.parent_run_id)) == 3
        shown = subprocess.run(
            [sys.executable, "-m", "assay.cli", "sweep", "status", name, "--storage", PG],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0 and shown.stdout.count("complete") >= 3, shown.stdout
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG)
