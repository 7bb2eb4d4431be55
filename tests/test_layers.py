"""The layers hold: `lint-imports` (import-linter) checks the contracts in pyproject.toml on the
package as it installs (assay, with assay.models inside it: in the repo they are two folders,
which the import graph would not see as one package). And importing Assay changes nothing in
the importing process's environment; the `assay` command sets its own defaults when it runs."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def _stage(into: Path) -> Path:
    shutil.copytree(
        REPO / "platform/assay", into / "assay", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        REPO / "models", into / "assay/models", ignore=shutil.ignore_patterns("__pycache__")
    )
    return into


def _lint(staged: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with pyproject.toml's contracts, on the staged package only."""
    return subprocess.run(
        [str(LINT), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=staged,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(staged)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_import_contracts_hold(tmp_path):
    done = _lint(_stage(tmp_path))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and " KEPT" in done.stdout


def test_a_broken_contract_fails_the_check(tmp_path):
    """The check can fail: a module outside the tracking package that imports MLflow breaks it."""
    staged = _stage(tmp_path)
    (staged / "assay/paths.py").write_text(
        (staged / "assay/paths.py").read_text() + "\nimport mlflow\n"
    )
    done = _lint(staged)
    assert done.returncode != 0 and "assay.paths -> mlflow" in done.stdout, done.stdout[-3000:]


PROBE = """
import os, pkgutil, importlib
before = dict(os.environ)
import assay
for m in pkgutil.walk_packages(assay.__path__, "assay."):
    if not m.name.endswith(".__main__"):  # `python -m assay.cli` runs the command
        importlib.import_module(m.name)
import assay.models, assay.cli
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(changed)
"""


def test_importing_assay_changes_no_environment_variable():
    env = {
        k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLFLOW_", "RAY_"))
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _loaded_after(imports: str, heavy: set[str]) -> list[str]:
    """Which of `heavy` a fresh interpreter holds after `import <imports>`."""
    probe = f"import sys, {imports}; print(sorted({heavy!r} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip())


def test_the_config_schema_and_the_data_stages_import_no_tracking():
    """The config schema and the DataModules (`assay.data`) load neither MLflow nor W&B: they sit
    under tracking (the data stages, `assay.preparation`, load no torch either: below)."""
    assert _loaded_after("assay.config, assay.data", {"mlflow", "wandb"}) == []


def test_the_cluster_and_jobs_commands_import_no_training_stack():
    """`assay cluster up/down/status`, `assay jobs` and `assay submit` talk to a head's Jobs API:
    they load neither torch, Lightning, MLflow nor W&B (13 s a command before), and Ray only when
    they call the head. The command line's error handling (`guarded`) loads none either."""
    heavy = {"torch", "lightning", "mlflow", "wandb", "ray"}
    assert _loaded_after("assay.cluster, assay.cli.common, assay.errors", heavy) == []


def test_the_data_stages_import_no_torch(tmp_path):
    """`assay fetch` and `assay prepare` (`assay.preparation`, numpy) load no torch, Lightning,
    MLflow or W&B, and fetching and preparing digits no scikit-learn either (scipy and pandas
    with it: 1.3-1.6 s a command): `dvc repro` runs one of each per data set."""
    heavy = {"torch", "lightning", "mlflow", "wandb", "sklearn", "scipy"}
    assert _loaded_after("assay.preparation, assay.cli.pipeline", heavy) == []
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    probe = (
        "import sys; from pathlib import Path; from assay.config import load_config; "
        "from assay.preparation import fetch, prepare; r = Path.cwd(); c = load_config(root=r); "
        "fetch('digits', c.fetch, r); prepare('digits', c.prepare, r); "
        f"print(sorted({heavy!r} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "data/digits/test.npz").exists()


def test_the_config_schema_imports_no_torch():
    """The config schema, architectures' typed settings included, is pydantic only: `assay config`
    and every command that only reads a config start without torch or Lightning (~5 s)."""
    assert _loaded_after("assay.config", {"torch", "lightning"}) == []


def test_sweep_status_imports_no_training_stack():
    """`assay sweep status` reads the study: Optuna only, not torch, Lightning, MLflow, W&B or
    Ray (~8 s a call before); what trains loads when a sweep runs."""
    heavy = {"torch", "lightning", "mlflow", "wandb", "ray"}
    assert _loaded_after("assay.sweep, assay.cli.sweeps", heavy) == []


def test_register_and_runs_gc_import_no_torch():
    """`assay register` (the champion gate: run after every evaluate by `dvc repro`) and `assay
    runs gc` talk to MLflow alone: no torch, Lightning or W&B (~6 s a call before); logging or
    loading a model loads torch when it happens."""
    heavy = {"torch", "lightning", "wandb"}
    assert _loaded_after("assay.registry, assay.orphans, assay.tracking", heavy) == []
