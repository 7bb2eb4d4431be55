"""`assay reproduce`: re-run a model's recorded chain and say whether its result holds.

From the lineage (`assay.lineage.trace`): the code at the recorded commit, checked out in a
temporary git worktree and run from there (its own `assay` package, not the installed one); the
recorded merged config (`config.json`) as the run's settings; the prepared data the run trained
on, taken from the workspace when its hash still matches, else prepared again from the pinned
source at that commit and hashed again. The new model is trained and scored on the same test
split (the runs' `eval.data_hash` must agree), logged to the same MLflow store as its own run
tagged `reproduces=<run id>`, and its primary metric compared with the original's within a
tolerance (per objective: `Objective.reproduce_tolerance`, from bench/seed_spread.py).

Refused, before any training, when the chain can't be rebuilt: a model trained from a dirty
tree, a commit the repository lacks, a run without its config or never scored, data that can be
neither found nor prepared to the recorded hash. A comparison is never made on other data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from assay import lineage, tracking
from assay.errors import UserError
from assay.objectives import get_objective


class CannotRebuild(UserError):
    """The chain can't be rebuilt (exit 2); the message says why and what would fix it."""


@dataclass
class Reproduction:
    target: str
    original_run: str
    reproduced_run: str
    commit: str
    metric: str
    original: float
    reproduced: float
    tolerance: float
    holds: bool
    data: str  # where the data came from: the workspace, or prepared again
    seconds: float


def reproduce(target: str, root: Path, uri: str, tolerance: float | None = None) -> Reproduction:
    started = time.perf_counter()
    chain = lineage.trace(target, root, uri)
    run = rebuildable(chain)
    objective = get_objective(run["objective"])
    metric = objective.primary[0]
    original = run["metrics"].get(metric)
    if original is None:
        raise CannotRebuild(
            f"run {run['id']} has no {metric}: it was never scored; `assay evaluate` it first"
        )
    tol = objective.reproduce_tolerance if tolerance is None else tolerance
    commit, uri = chain["git"]["commit"], chain["tracking_uri"]  # the original's own store
    client = tracking.ensure_store(uri)
    prefix = _git(root, "rev-parse", "--show-prefix")  # the project's folder in its repository
    with tempfile.TemporaryDirectory(prefix="assay-reproduce-") as tmp:
        tree = Path(tmp) / "src"
        src = tree / prefix
        try:
            # no hooks: a post-checkout hook (`dvc install`'s) would check data out into it
            _git(root, "-c", "core.hooksPath=/dev/null", "worktree", "add", "--detach",
                 "--quiet", str(tree), commit)  # fmt: skip
            env = _env(Path(tmp), src, uri)
            data = _data(chain["data"], root, src, env)
            # the recorded config as an experiment file named by the run's key (a file that
            # names no run is keyed by its name, as the original was by its data and arch)
            key = run["key"]
            exp = Path(tmp) / f"{key}.yaml"
            exp.write_text(yaml.safe_dump(chain["params"]["config"], sort_keys=False))
            args = ("-e", str(exp), "--set", "tracking.wandb.mode=disabled")
            _assay(src, env, "train", *args)
            new_id = _tag_new_run(src / "outputs" / key, client, run["id"])  # before anything fails
            _assay(src, env, "evaluate", *args)
            new = _new_run(new_id, client, run)
        finally:  # never hide what failed above, nor leave the worktree registered
            for cleanup in (("worktree", "remove", "--force", str(tree)), ("worktree", "prune")):
                subprocess.run(["git", *cleanup], cwd=root, capture_output=True)
    value = new["metrics"].get(metric)
    if value is None:
        raise CannotRebuild(f"the reproduction (run {new_id}) logged no {metric}")
    holds = abs(value - original) <= tol
    for tag, text in {
        "reproduce.metric": metric,
        "reproduce.original": repr(original),
        "reproduce.holds": str(holds).lower(),
    }.items():
        client.set_tag(new_id, tag, text)
    seconds = time.perf_counter() - started
    return Reproduction(
        target, run["id"], new_id, commit, metric, original, value, tol, holds, data, seconds
    )


def rebuildable(chain: dict) -> dict:
    """The original run, once everything needed to rebuild it is known to be there."""
    run, git, params = chain["run"], chain["git"], chain["params"]
    if run.get("missing"):
        raise CannotRebuild(f"run {run['id']} is not in the store: nothing to rebuild it from")
    if git["commit"] == "none":
        raise CannotRebuild(f"run {run['id']} was trained outside a git repository: no code")
    if git["dirty"] and not set(git["dirty_files"] or ["?"]) <= lineage.RECORDED_ELSEWHERE:
        files = ", ".join(git["dirty_files"] or ["not recorded"])
        raise CannotRebuild(
            f"run {run['id']} was trained from a dirty tree (commit {git['commit'][:12]} plus "
            f"uncommitted changes nothing recorded; files: {files}), so its code can't be "
            "rebuilt; commit before training to make a model reproducible"
        )
    if not git["in_repository"]:
        raise CannotRebuild(f"commit {git['commit']} is not in this repository: `git fetch` it")
    if params["config"] is None:
        raise CannotRebuild(f"run {run['id']} has no config.json: its settings were not recorded")
    if params["digest"] and params["config_digest"] != params["digest"]:
        raise CannotRebuild(f"run {run['id']}'s config.json is not the config it digested")
    if not run["objective"]:
        raise CannotRebuild(f"run {run['id']} has no objective tag: not a run Assay trained")
    return run


def _data(data: dict, root: Path, src: Path, env: dict) -> str:
    """The run's prepared data into the worktree: the workspace's when it still matches the
    recorded hash, else prepared again from the pinned source at that commit and checked."""
    name, recorded = data["dataset"], data["hash"]
    target = src / "data" / name
    if data["matches"]:  # the folder's hash and every split file's sha256 (lineage checks)
        shutil.copytree(root / "data" / name, target)
        return f"the workspace's data/{name} (hash {recorded} matches)"
    for step in ("fetch", "prepare"):
        _assay(src, env, step, name)
    logged = bool(data["splits"]) and all(sp.get("sha256") for sp in data["splits"])
    how = f"the sha256 the run logged for each split file ({len(data['splits'])})"
    if data["hash_source"] == "dvc.lock":
        lock = tracking.lock_hash(src, name)
        if lock is None and logged:  # dvc.lock not committed: the split files tell (below)
            pass
        elif lock != recorded:
            raise CannotRebuild(
                f"data/{name}: the commit's dvc.lock records {lock or 'nothing (not committed)'},"
                f" not the {recorded} the run trained on; `dvc checkout data/{name}` the "
                "recorded data and run again"
            )
        elif lineage.dvc_changed(src, f"prepare@{name}") is not False:
            raise CannotRebuild(
                f"data/{name} prepared again from its pinned source does not match the {recorded} "
                f"the run trained on; `dvc checkout data/{name}` the recorded data and run again"
            )
        else:
            how = f"dvc.lock's {recorded}, by `dvc status`"
    else:
        again = tracking.files_md5(target)
        if again != recorded:
            raise CannotRebuild(
                f"data/{name} prepared again from its pinned source hashes to {again}, not the "
                f"{recorded} the run trained on: no comparison on other data"
            )
        how = f"hash {recorded}"
    differ = lineage.split_mismatches(target, data["splits"])
    if differ:
        raise CannotRebuild(
            f"data/{name} prepared again from its pinned source is not what the run read: "
            + "; ".join(differ)
        )
    return f"data/{name} prepared again from its pinned source ({how} matches)"


def _tag_new_run(out: Path, client, original_id: str) -> str:
    """The reproduction's run id, tagged `reproduces` at once: a later failure leaves a run
    that says what it was."""
    info = yaml.safe_load((out / "model" / "run.json").read_text())  # JSON is YAML
    client.set_tag(info["mlflow_run_id"], "reproduces", original_id)
    return info["mlflow_run_id"]


def _new_run(run_id: str, client, original: dict) -> dict:
    new = tracking.read_run(client, run_id)
    ours = new["tags"].get(tracking.SCORED_ON)
    theirs = original["scored_on"]
    if not ours or ours != theirs:
        raise CannotRebuild(
            f"the reproduction was scored on test data {ours}, the original on {theirs}: "
            "no comparison on other data"
        )
    return new


def _env(tmp: Path, src: Path, uri: str) -> dict:
    """The commit's own `assay` as it installs (assay.models inside it), the original store."""
    pkg = tmp / "pkg"
    if not (src / "platform" / "assay").is_dir():
        raise CannotRebuild(
            f"the recorded commit has no platform/assay beside {src.name or 'its'} params.yaml: "
            "`assay reproduce` rebuilds a project that carries Assay's code in its repository"
        )
    shutil.copytree(src / "platform" / "assay", pkg / "assay")
    if (src / "models").is_dir():
        shutil.copytree(src / "models", pkg / "assay" / "models")
    path = os.pathsep.join([str(pkg), str(src)])
    return {**os.environ, "PYTHONPATH": path, "MLFLOW_TRACKING_URI": uri}


def _assay(src: Path, env: dict, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "assay.cli", *args], cwd=src, env=env)
    if done.returncode != 0:
        raise CannotRebuild(
            f"`assay {' '.join(args[:1])}` at the recorded commit failed (exit {done.returncode})"
        )


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise CannotRebuild(f"git {' '.join(args[:4])}: {done.stderr.strip()}")
    return done.stdout.strip()
