"""What the sweep tests share: a sweep file over a tiny digits CNN, the stores a sweep writes, and
a console that keeps what a sweep prints."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import yaml
from mlflow.tracking import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.conftest import ray_processes

BASE = [
    "train.dataset=digits",
    "train.arch=cnn_tiny",
    "train.batch_size=64",
    "train.early_stopping_patience=0",
    "train.scheduler=none",
]


def write_sweep(project: Path, name: str = "s", **sweep) -> Path:
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


def mlflow_client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


def optuna_study(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def child_runs(client: MlflowClient, parent_id: str) -> list:
    exp = client.get_experiment_by_name("assay").experiment_id
    return client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'")


def retry_of(t) -> int | None:
    """The trial this one retries (Optuna's own record of a heartbeat-stale trial's retry)."""
    with warnings.catch_warnings():  # experimental in Optuna since 2.8, and still the way
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(t)


def trial_processes() -> list:
    return [p for p in ray_processes() if "run_trial" in " ".join(p.info["cmdline"] or [])]


def trial_errors(trials) -> list:
    """What each trial that did not complete noted as its error (for an assertion's message)."""
    return [t.user_attrs.get("error") for t in trials if t.state != TrialState.COMPLETE]


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, text: str = "", **_: object) -> None:
        self.lines.append(str(text))
