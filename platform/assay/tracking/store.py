"""The MLflow store, what every run is tagged with (git commit, data hash), and the model
registry's names and versions."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from filelock import FileLock
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:  # tracking sits below the config schema: it only reads the settings given
    from assay.config import TrackingConfig

# What a failed MLflow call raises, for callers that say what to do instead.
TrackingError = MlflowException


# ------------------------------------------------------------------------------------ the store
def tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    return cfg.store_uri(root)  # a fact of the settings: `assay submit` reads it without MLflow


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def ensure_store(uri: str) -> MlflowClient:
    """Create (or migrate) the store once, under a file lock: two processes creating a new SQLite
    store at once corrupt its schema migration (see PITFALLS)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    db = _sqlite_path(uri)
    if db is None:
        return client
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=300):
        client.search_experiments(max_results=1)  # creates and migrates the schema
    return client


def open_store(uri: str) -> MlflowClient | None:
    """The store at `uri`, or None for a SQLite file that does not exist (nothing to read, and
    none created by looking)."""
    db = _sqlite_path(uri)
    return None if db is not None and not db.exists() else ensure_store(uri)


# MLflow 3's UI files an experiment by its kind (its header's "Machine learning"); untagged, it
# guesses. Which view a page opens in (GenAI: traces, "0 traces"; model training: runs, models) is
# the browser's own setting, GenAI until the user flips it, unless the address names it: the
# addresses Assay prints and links (`ui_page`) open the model-training view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def ui_page(ui: str, experiment_id: str, run_id: str | None = None) -> str:
    """The address of an experiment's runs, or of one run, in MLflow's UI at `ui`, in its
    model-training view."""
    page = f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs"
    return f"{page}/{run_id}?{MODEL_TRAINING_VIEW}" if run_id else f"{page}?{MODEL_TRAINING_VIEW}"


def experiment_id(client: MlflowClient, name: str, root: Path, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        for k, v in EXPERIMENT_KIND.items():
            if k not in exp.tags:  # made by an earlier Assay, or by hand
                client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id
    # With a SQLite store, keep artifacts beside it whatever the cwd (a Ray job runs elsewhere).
    db = _sqlite_path(uri)
    location = (db.parent / "mlruns").as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
    except MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


# ----------------------------------------------------------------------------------- provenance
def git_info(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    changed = git("diff", "HEAD", "--name-only") if commit else ""
    files = changed.splitlines()
    tags = {"mlflow.source.git.commit": commit or "none", "git.dirty": str(bool(files)).lower()}
    if files:  # which tracked files differ from the commit (what `assay reproduce` weighs)
        tags["git.dirty_files"] = ",".join(files)[:5000]
    return tags


def lock_hash(root: Path, dataset: str) -> str | None:
    """The md5 dvc.lock records for `data/<dataset>` (stage prepare@<dataset>); None if none."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for out in stages.get(f"prepare@{dataset}", {}).get("outs", []):
        if out.get("path") == f"data/{dataset}" and out.get("md5"):
            return out["md5"]
    return None


def data_hash(root: Path, dataset: str) -> dict[str, str]:
    """The prepared data's DVC hash from dvc.lock, else an md5 of the files we computed here."""
    md5 = lock_hash(root, dataset)
    if md5:
        return {"dvc.data_hash": md5, "dvc.data_hash_source": "dvc.lock"}
    return {"dvc.data_hash": files_md5(root / "data" / dataset), "dvc.data_hash_source": "computed"}


SCORED_ON = "eval.data_hash"  # run tag: the sha256 of the test split `evaluate` scored


def files_md5(folder: Path) -> str:
    """One md5 over the names and bytes of every file below `folder`: the same files give the
    same hash wherever they are and whoever made them (dvc.lock's md5 exists only under DVC)."""
    h = hashlib.md5()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def provenance(root: Path, dataset: str) -> dict[str, str]:
    """The git commit and the data's hash: the tags every run carries."""
    return {**git_info(root), **data_hash(root, dataset)}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Flattened params, each cut to MLflow's 6000 characters, 100 a batch (MLflow's limit)."""
    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def logged_steps(uri: str, run_id: str) -> dict[str, int]:
    """The last step (a fit's: its epoch) at which the run logged each of its metrics."""
    client = MlflowClient(uri)
    return {
        key: max(m.step for m in client.get_metric_history(run_id, key))
        for key in client.get_run(run_id).data.metrics
    }


def end_run(uri: str, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
    """End a run whose process died before it finished its work: its tags, then `status`
    (KILLED, FAILED). Also one already marked FINISHED: a trial's process can end its run and
    die before Optuna hears of it; the trial is retried, so its run did not count. A run already
    FAILED or KILLED stays."""
    client = MlflowClient(uri, registry_uri=uri)
    if client.get_run(run_id).info.status not in ("RUNNING", "SCHEDULED", "FINISHED"):
        return
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id, status)


def logged_model_source(model_uri: str | None) -> str | None:
    """The run that logged the model `models:/<model id>` (None without a URI)."""
    model_id = (model_uri or "").removeprefix("models:/")
    return mlflow.get_logged_model(model_id).source_run_id if model_id else None


def register_version(model_uri: str, name: str):
    """A new version of the registered model `name` (created first if needed)."""
    return mlflow.register_model(model_uri, name)


def registered_names(uri: str) -> list[str]:
    return [m.name for m in MlflowClient(uri, registry_uri=uri).search_registered_models()]
