"""What a run was trained on, recorded where MLflow's UI and API show it (`assay lineage` reads it
back): the prepared splits as MLflow dataset inputs, and the merged config as `config.json`.

Each split of `data/<name>/` is one `mlflow.data` dataset input of the run, tagged with MLflow's
own context (training, validation, testing). Its digest is the prepared folder's hash (DVC's
md5 from dvc.lock, else Assay's md5 of the files: the run's `dvc.data_hash` tag); its source is
the pinned raw file the folder was prepared from (package and version, member, sha256), which
`meta.json` carries, so the source travels with the data; its profile counts the split's rows and
gives the split file's own sha256.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from assay.paths import sha256_file

CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
CONFIG_ARTIFACT = "config.json"


class PinnedSource(DatasetSource):
    """Where a data set's raw file came from: a pinned release of a package (`fetch.<name>` in
    params.yaml), the file taken from it and that file's sha256, as `assay fetch` recorded them
    in `data/raw/<name>/source.json`."""

    def __init__(self, **fields: Any):
        self.fields = fields

    @staticmethod
    def _get_source_type() -> str:
        return "assay_pinned"

    def load(self) -> Any:
        raise NotImplementedError(
            f"{self.fields.get('origin', 'this source')}: get the file with `assay fetch`"
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> PinnedSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> PinnedSource:
        return cls(**source_dict)


class PreparedSplit(MetaDataset):
    """One prepared split: metadata only (MLflow keeps no copy of the data)."""

    def __init__(self, source: PinnedSource, name: str, digest: str, profile: dict[str, Any]):
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:  # MetaDataset's leaves the profile out
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def split_inputs(data: Path, digest: str) -> list[DatasetInput]:
    """The dataset inputs for the splits in `data` (a prepared `data/<name>/` folder)."""
    meta = json.loads((data / "meta.json").read_text())
    source = PinnedSource(**meta.get("source", {}))
    inputs = []
    for split, count in meta.get("counts", {}).items():
        f = data / f"{split}.npz"
        profile = {"rows": count, "file": f.name, "sha256": sha256_file(f) if f.exists() else None}
        ds = PreparedSplit(source, f"{meta['dataset']}-{split}", digest, profile)
        context = InputTag("mlflow.data.context", CONTEXTS.get(split, split))
        inputs.append(DatasetInput(ds._to_mlflow_entity(), tags=[context]))
    return inputs


def _log_inputs(client: MlflowClient, run_id: str, inputs: list[DatasetInput], tries: int = 4):
    """`client.log_inputs`, again after a failure. MLflow's SQL store looks each dataset up and
    inserts it when absent, in one transaction: runs that log the same new dataset at once (a
    sweep's parallel trials) race, and the loser's insert fails (CI saw a trial FAIL so). Tried
    again, the dataset is found and only the run's input is written."""
    for attempt in range(tries):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def log_lineage(client: MlflowClient, run_id: str, root: Path, tags: dict, config: dict) -> None:
    """The run's data inputs (when its prepared folder is here) and its merged config."""
    dataset, digest = tags.get("dataset"), tags.get("dvc.data_hash")
    data = Path(root) / "data" / str(dataset)
    if dataset and digest and (data / "meta.json").exists():
        _log_inputs(client, run_id, split_inputs(data, digest))
    client.log_text(run_id, json.dumps(config, indent=2, sort_keys=True), CONFIG_ARTIFACT)


# ------------------------------------------------------------------------- registry versions
# What a registered version was made from, copied from its run's tags when it is registered, so
# the registry alone answers "which data, code and settings": version tag -> run tag.
VERSION_TAGS = {
    "lineage.data_hash": "dvc.data_hash",
    "lineage.git_commit": "mlflow.source.git.commit",
    "lineage.git_dirty": "git.dirty",
    "lineage.params_digest": "params.digest",
    "lineage.sweep_study": "optuna.study",
    "lineage.sweep_trial": "optuna.trial",
    "lineage.ray_run": "ray.run_name",
    "lineage.wandb_run": "wandb.run_id",
}


def tag_version(client: MlflowClient, name: str, version: str, run_id: str) -> None:
    tags = client.get_run(run_id).data.tags
    client.set_model_version_tag(name, version, "lineage.run_id", run_id)
    for key, source in VERSION_TAGS.items():
        if source in tags:
            client.set_model_version_tag(name, version, key, tags[source])
    # always there, empty for a model trained from scratch: a later run that starts from a
    # registered model (transfer learning) fills it
    client.set_model_version_tag(
        name, version, "lineage.parent_model", tags.get("assay.parent_model", "")
    )


# ------------------------------------------------------------------------------ reading it back
def resolve_model(client: MlflowClient, uri: str) -> tuple[dict, str]:
    """(the registered version as plain data, its run id) for models:/NAME@ALIAS or
    models:/NAME/VERSION. Raises ValueError for any other form."""
    if not uri.startswith("models:/"):
        raise ValueError(uri)
    ref = uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        mv = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, number = ref.split("/", 1)
        mv = client.get_model_version(name, number)
    else:
        raise ValueError(uri)
    version = {
        "name": mv.name,
        "version": str(mv.version),
        "aliases": sorted(mv.aliases or []),
        "status": mv.status,
        "tags": dict(mv.tags or {}),
    }
    return version, mv.run_id


def read_run(client: MlflowClient, run_id: str) -> dict | None:
    """A run as plain data: status, tags, metrics, its data inputs and merged config; None when
    the store has no such run."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    inputs = []
    for ds_input in run.inputs.dataset_inputs if run.inputs else []:
        ds = ds_input.dataset
        inputs.append(
            {
                "name": ds.name,
                "digest": ds.digest,
                "source_type": ds.source_type,
                "source": json.loads(ds.source) if ds.source else None,
                "profile": json.loads(ds.profile) if ds.profile else None,
                "context": {t.key: t.value for t in ds_input.tags}.get("mlflow.data.context"),
            }
        )
    return {
        "id": run_id,
        "name": run.info.run_name,
        "status": run.info.status,
        "deleted": run.info.lifecycle_stage == "deleted",
        "experiment_id": run.info.experiment_id,
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
        "inputs": inputs,
        "config": _config(client, run_id),
    }


def _config(client: MlflowClient, run_id: str) -> dict | None:
    names = {f.path for f in client.list_artifacts(run_id)}
    if CONFIG_ARTIFACT not in names:  # a run from before Assay logged it
        return None
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bar():
        path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        return json.loads(Path(path).read_text())


@contextlib.contextmanager
def _no_progress_bar():
    """MLflow draws a progress bar for every download, one small file included."""
    var = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    saved = os.environ.get(var)
    os.environ[var] = "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved


def trained_on(client: MlflowClient, digest: str) -> tuple[list[dict], list[dict]]:
    """(runs, registered versions) whose data hash is `digest`, in every experiment."""
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = (
        [
            {
                "id": r.info.run_id,
                "name": r.info.run_name,
                "status": r.info.status,
                "key": r.data.tags.get("assay.key"),
                "trial": r.data.tags.get("optuna.trial"),
            }
            for r in client.search_runs(
                exps, f"tags.`dvc.data_hash` = '{digest}'", max_results=5000
            )
        ]
        if exps
        else []
    )
    versions = [
        {
            "name": mv.name,
            "version": str(mv.version),
            "run_id": mv.run_id,
            # a search leaves the aliases out
            "aliases": sorted(client.get_model_version(mv.name, mv.version).aliases or []),
        }
        for mv in client.search_model_versions(max_results=10000)
        if (mv.tags or {}).get("lineage.data_hash") == digest
    ]
    return runs, versions
