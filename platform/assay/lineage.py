"""Lineage: from a registered model (or a run, or an `outputs/<key>` folder) back to everything it
was made from, and from a prepared data set forward to every run and version trained on it.

The chain is read from what was recorded when the model was made (the run's tags, its MLflow
dataset inputs and `config.json`, the registry version's `lineage.*` tags), then checked against
this workspace: a dirty tree, a commit this repository lacks, data that no longer hashes to what
the run trained on, a run deleted or never finished, a W&B or Ray folder gone. Each is a line in
`problems`, said plainly; nothing is left out because it is missing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from assay import tracking
from assay.config import config_digest
from assay.errors import UserError
from assay.paths import sha256_file

FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID or an outputs/KEY folder"
# Tracked files whose uncommitted changes a run records anyway: params.yaml through the merged
# config (config.json), dvc.lock through the data hash. `dvc exp run -S` and a re-prepared data
# stage change them before `assay train` runs, and they leave a run reproducible.
RECORDED_ELSEWHERE = {"params.yaml", "dvc.lock"}


class LineageError(UserError):
    """A target that names nothing to trace."""


def trace(target: str, root: Path, uri: str) -> dict[str, Any]:
    """The chain of `target` (see FORMS) as plain data, with its `problems`."""
    version, run_id, uri = _locate(target, root, uri)
    client = tracking.open_store(uri)
    if client is None:
        raise LineageError(f"no MLflow store at {uri}: nothing has been tracked in this project")
    if version is None and target.startswith("models:/"):
        version, run_id = _version(client, target)
    run = tracking.read_run(client, run_id)
    problems: list[str] = []
    chain: dict[str, Any] = {"target": target, "tracking_uri": uri, "model": version}
    if run is None:
        problems.append(f"run {run_id} is not in the store {uri} (deleted for good?)")
        chain.update(run={"id": run_id, "missing": True}, problems=problems)
        return chain
    tags = run["tags"]
    chain["run"] = _run(run, problems)
    chain["wandb"] = _wandb(tags, problems)
    chain["git"] = _git(tags, root, problems)
    chain["params"] = _params(tags, run["config"], problems)
    chain["data"] = _data(tags, run["inputs"], root, problems)
    chain["sweep"] = _sweep(tags)
    chain["ray"] = _ray(tags, problems)
    if version is not None:
        _check_version(version, run_id, tags, problems)
    chain["problems"] = problems
    return chain


def trained_on(data: str, root: Path, uri: str) -> dict[str, Any]:
    """Every run and registered version whose data hash is that of `data`: a prepared folder
    (its dvc.lock hash and Assay's md5 of its files are both looked for) or a hash itself."""
    path = Path(data) if Path(data).is_absolute() else root / data
    hashes = [data]
    if path.is_dir():
        hashes = [h for h in (tracking.lock_hash(root, path.name), tracking.files_md5(path)) if h]
    elif not re.fullmatch(r"[0-9a-f]{32}(\.dir)?", data):
        raise LineageError(f"--data {data}: neither a folder here nor a data hash (32 hex digits)")
    client = tracking.open_store(uri)
    if client is None:
        raise LineageError(f"no MLflow store at {uri}: nothing has been tracked in this project")
    runs: list[dict] = []
    versions: list[dict] = []
    for h in dict.fromkeys(hashes):
        found = tracking.trained_on(client, h)
        runs += found[0]
        versions += found[1]
    return {"data": data, "hashes": hashes, "runs": runs, "versions": versions}


# ------------------------------------------------------------------------------- the target
def _locate(target: str, root: Path, uri: str) -> tuple[dict | None, str, str]:
    if target.startswith("runs:/"):
        run_id = target.removeprefix("runs:/").split("/")[0]
        if not run_id:
            raise LineageError(f"{target}: no run id; give one of {FORMS}")
        return None, run_id, uri
    if target.startswith("models:/"):
        return None, "", uri
    folder = Path(target) if Path(target).is_absolute() else root / target
    info = folder / "model" / "run.json"
    if not info.is_file():
        raise LineageError(f"{target}: not {FORMS} (no {info})")
    recorded = json.loads(info.read_text())
    return None, recorded["mlflow_run_id"], recorded.get("mlflow_tracking_uri", uri)


def _version(client, target: str) -> tuple[dict, str]:
    try:
        return tracking.resolve_model(client, target)
    except ValueError:
        raise LineageError(f"{target}: not {FORMS}") from None
    except tracking.TrackingError as e:
        raise LineageError(f"{target}: {e.message}") from None


# --------------------------------------------------------------------------------- each link
def _run(run: dict, problems: list[str]) -> dict:
    if run["deleted"]:
        problems.append(f"run {run['id']} is deleted (in MLflow's trash; `mlflow gc` ends it)")
    if run["status"] != "FINISHED":
        problems.append(f"run {run['id']} is {run['status']}, not FINISHED")
    metrics = {k: v for k, v in sorted(run["metrics"].items()) if k.startswith(("test/", "best_"))}
    keep = ("id", "name", "status", "deleted", "experiment_id")
    tags = run["tags"]
    return {
        **{k: run[k] for k in keep},
        "key": tags.get("assay.key"),
        "objective": tags.get("objective"),
        "scored_on": tags.get(tracking.SCORED_ON),  # the sha256 of the test split it was scored on
        "metrics": metrics,
    }


def _wandb(tags: dict, problems: list[str]) -> dict | None:
    if "wandb.run_id" not in tags:
        return None  # tracking.wandb.mode was disabled for this run
    folder = tags.get("wandb.run_dir")
    exists = bool(folder) and Path(folder).is_dir()
    if folder and not exists:
        problems.append(f"W&B run {tags['wandb.run_id']}'s folder {folder} is gone")
    return {
        "run_id": tags["wandb.run_id"],
        "project": tags.get("wandb.project"),
        "dir": folder,
        "dir_exists": exists,
    }


def _git(tags: dict, root: Path, problems: list[str]) -> dict:
    commit = tags.get("mlflow.source.git.commit", "none")
    dirty = tags.get("git.dirty") == "true"
    files = tags["git.dirty_files"].split(",") if tags.get("git.dirty_files") else None
    known = commit != "none" and _git_ok(root, "cat-file", "-e", f"{commit}^{{commit}}")
    if commit == "none":
        problems.append("trained outside a git repository: no commit to rebuild from")
    elif not known:
        problems.append(f"commit {commit} is not in the repository at {root}")
    if dirty and files and set(files) <= RECORDED_ELSEWHERE:
        problems.append(
            f"trained from a dirty tree: commit {commit[:12]} with uncommitted changes to "
            f"{', '.join(files)} only, which the run's config.json and data hash record"
        )
    elif dirty:
        which = f" ({', '.join(files)})" if files else ""
        problems.append(
            f"trained from a dirty tree: commit {commit[:12]} plus uncommitted changes{which}, "
            "which nothing recorded; the commit alone may not rebuild it"
        )
    return {"commit": commit, "dirty": dirty, "dirty_files": files, "in_repository": known}


def _params(tags: dict, config: dict | None, problems: list[str]) -> dict:
    digest = tags.get("params.digest")
    recomputed = None
    if config is None:
        problems.append("no config.json on the run (made before Assay recorded it)")
    else:
        recomputed = config_digest(config)
        if digest and recomputed != digest:
            problems.append(f"config.json hashes to {recomputed}, not params.digest {digest}")
    return {"digest": digest, "config_digest": recomputed, "config": config}


def _data(tags: dict, inputs: list[dict], root: Path, problems: list[str]) -> dict:
    dataset, recorded = tags.get("dataset", ""), tags.get("dvc.data_hash")
    how = tags.get("dvc.data_hash_source")
    folder = root / "data" / dataset
    now = None
    if not folder.is_dir():
        problems.append(f"data/{dataset} is not in this workspace: `dvc repro prepare@{dataset}`")
    elif how == "dvc.lock":
        now = tracking.lock_hash(root, dataset)
        if now != recorded:
            problems.append(
                f"dvc.lock now records {now} for data/{dataset}; the run trained on {recorded}: "
                "the data was prepared again since"
            )
        else:
            changed = dvc_changed(root, f"prepare@{dataset}")
            if isinstance(changed, str):
                problems.append(f"`dvc status prepare@{dataset}` could not check: {changed}")
                now = None
            elif changed:
                problems.append(f"data/{dataset} has changed since dvc.lock recorded {recorded}")
                now = "changed"
    else:
        now = tracking.files_md5(folder)
        if now != recorded:
            problems.append(
                f"data/{dataset} now hashes to {now}, not the {recorded} the run trained on"
            )
    source = next((i["source"] for i in inputs if i.get("source")), None)
    source_recorded = source is not None
    if source is None and (folder / "meta.json").is_file():
        source = json.loads((folder / "meta.json").read_text()).get("source")
    splits = [{"name": i["name"], "context": i["context"], **(i["profile"] or {})} for i in inputs]
    # each split file against the sha256 the run logged for it: the folder's hash (from
    # dvc.lock) says what DVC last recorded, this what the run itself read
    differ = split_mismatches(folder, splits) if folder.is_dir() else []
    problems += [f"data/{dataset}/{d}" for d in differ]
    return {
        "dataset": dataset,
        "stage": f"prepare@{dataset}",
        "hash": recorded,
        "hash_source": how,
        "workspace_hash": now,
        "matches": recorded is not None and now == recorded and not differ,
        "source": source,
        "source_recorded": source_recorded,
        "splits": splits,
    }


def split_mismatches(folder: Path, splits: list[dict]) -> list[str]:
    """The split files in `folder` whose sha256 is not the one the run recorded for them."""
    out = []
    for split in splits:
        name, recorded = split.get("file"), split.get("sha256")
        if not (name and recorded):
            continue
        f = folder / name
        if not f.is_file():
            out.append(f"{name} is missing (the run read sha256 {recorded[:12]}...)")
        elif (now := sha256_file(f)) != recorded:
            out.append(f"{name} has sha256 {now[:12]}..., not the {recorded[:12]}... the run read")
    return out


def _sweep(tags: dict) -> dict | None:
    if "optuna.study" not in tags:
        return None
    return {
        "study": tags["optuna.study"],
        "trial": tags.get("optuna.trial"),
        "parent_run": tags.get("mlflow.parentRunId"),
    }


def _ray(tags: dict, problems: list[str]) -> dict | None:
    if "ray.run_name" not in tags:
        return None
    storage = tags.get("ray.storage_path", "")
    checkpoint = tags.get("ray.best_checkpoint")
    local = "://" not in storage
    exists = Path(storage).is_dir() if local and storage else None
    if exists is False:
        problems.append(f"Ray run {tags['ray.run_name']}'s folder {storage} is gone")
    elif exists and checkpoint and not Path(checkpoint).is_dir():
        problems.append(f"Ray run {tags['ray.run_name']}'s best checkpoint {checkpoint} is gone")
    return {
        "run_name": tags["ray.run_name"],
        "storage_path": storage,
        "checkpoint": checkpoint,
        "workers": tags.get("ray.workers"),
        "exists": exists,
    }


def _check_version(version: dict, run_id: str, tags: dict, problems: list[str]) -> None:
    vt = version["tags"]
    if "lineage.run_id" not in vt:
        problems.append(f"v{version['version']} has no lineage.* tags (registered before them)")
        return
    pairs = [("lineage.data_hash", "dvc.data_hash"), ("lineage.params_digest", "params.digest")]
    for mine, theirs in pairs:
        if vt.get(mine) != tags.get(theirs):
            problems.append(
                f"v{version['version']}'s {mine} {vt.get(mine)} differs from run {run_id}'s "
                f"{theirs} {tags.get(theirs)}"
            )


# --------------------------------------------------------------------------------- git, DVC
def _git_ok(root: Path, *args: str) -> bool:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True)
    return done.returncode == 0


def dvc_changed(root: Path, stage: str) -> bool | str:
    """Whether DVC sees the stage's outputs changed since dvc.lock (`dvc status STAGE`; its code
    or raw input changing is not the data changing); DVC's error when it cannot tell. A process
    of its own: DVC resolves a stage's paths from the working directory."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", stage],
        cwd=root,
        capture_output=True,
        text=True,
    )
    try:
        status = json.loads(done.stdout)
    except ValueError:
        return (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}")[-300:]
    entries = status.get(stage, []) if isinstance(status, dict) else []
    return any("changed outs" in e for e in entries if isinstance(e, dict))
