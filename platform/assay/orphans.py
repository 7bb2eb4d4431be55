"""What a killed process leaves behind, found and cleaned: MLflow runs stuck RUNNING and the
scratch folders (`.model.*`, `.eval.*`, `.<file>.*`) that `assay.paths` writes outputs into.

A run is abandoned when its owner (`assay.lifecycle.owner_tags`) is no longer alive on this
host. It is ended KILLED with a note saying so, and the scratch folders it named are removed.
Runs owned on another host cannot be checked from here and are left alone, and so reported.
Works on any MlflowClient it is given (MLflow itself stays in `assay.tracking`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from assay import lifecycle

SCRATCH_TAG = "assay.scratch"  # JSON list of the run's scratch folders
CLOSED_BY = "assay.closed_by"
# `.<target name>.<pid>-<8 random>` (pid since owners were recorded) beside the target
SCRATCH_NAME = re.compile(r"^\.(?P<target>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}$")
SCRATCH_HOMES = ("outputs", "data")  # where `assay` writes through scratch folders


@dataclass
class Found:
    """One thing `gc` looked at: a run or a folder, and what was (or would be) done."""

    kind: str  # run | folder
    what: str  # run name + id, or the folder
    owner: str  # pid@host, or why unknown
    action: str  # closed KILLED, removed, left: <why>


def scratch_paths(tags: dict[str, str]) -> list[Path]:
    """The scratch folders a run named; only names `assay.paths` makes, so a bad tag can never
    make us delete anything else."""
    try:
        paths = [Path(p) for p in json.loads(tags.get(SCRATCH_TAG) or "[]")]
    except (ValueError, TypeError):
        return []
    return [p for p in paths if p.is_absolute() and SCRATCH_NAME.match(p.name)]


def add_scratch(tags: dict[str, str], path: Path) -> str:
    """The scratch tag's new value with `path` added."""
    paths = [str(p) for p in scratch_paths(tags)]
    return json.dumps([*paths, str(Path(path).resolve())])


def _owner(tags: dict[str, str]) -> str:
    if lifecycle.OWNER_PID not in tags:
        return "not recorded"
    return f"{tags[lifecycle.OWNER_PID]}@{tags.get(lifecycle.OWNER_HOST)}"


def close_run(client, run, closed_by: str, dry_run: bool = False) -> list[Path]:
    """End an abandoned `run` KILLED with a note; remove its scratch folders. Returns them."""
    tags = run.data.tags
    removed = [p for p in scratch_paths(tags) if p.exists()]
    if dry_run:
        return removed
    note = lifecycle.owner_note(tags, closed_by, time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    client.set_tag(run.info.run_id, CLOSED_BY, closed_by)
    client.set_tag(run.info.run_id, "error", note)
    client.set_terminated(run.info.run_id, "KILLED")
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def running_runs(client, experiment_ids: list[str], key: str | None = None) -> list:
    """Every RUNNING run in the experiments (of assay key `key`, if given), all pages."""
    query = "attributes.status = 'RUNNING'"
    if key is not None:
        query += f" and tags.`assay.key` = '{key}'"
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def close_predecessors(client, experiment_id: str, key: str, run_id: str) -> list[Found]:
    """Before a run of `key` trains: end the runs of the same key whose owner died (a `kill -9`,
    a lost terminal) and remove their scratch. A sweep's trials are left to `--resume`."""
    found = []
    for run in running_runs(client, [experiment_id], key):
        tags = run.data.tags
        if run.info.run_id == run_id or "optuna.trial" in tags:
            continue
        state = lifecycle.owner_state(tags)
        name = f"{run.info.run_name} ({run.info.run_id})"
        if state == "dead":
            close_run(client, run, f"run {run_id}")
            found.append(Found("run", name, _owner(tags), "closed KILLED"))
        elif state == "elsewhere":
            found.append(Found("run", name, _owner(tags), "left: owner on another host"))
    return found


def gc(client, root: Path, min_age: float, dry_run: bool = False) -> list[Found]:
    """Close every RUNNING run whose owner died on this host, remove the scratch folders they
    named, then the stray scratch folders under outputs/ and data/ older than `min_age` seconds
    whose owner is dead or not recorded. `dry_run`: report only. `client` None: no store yet."""
    found: list[Found] = []
    protected: set[Path] = set()
    exps = [e.experiment_id for e in client.search_experiments()] if client else []
    by = f"`assay runs gc` (pid {os.getpid()})"
    for run in running_runs(client, exps) if exps else []:
        tags = run.data.tags
        state = lifecycle.owner_state(tags)
        name = f"{run.info.run_name} ({run.info.run_id})"
        if state == "dead":
            removed = close_run(client, run, by, dry_run)
            protected.update(p.resolve() for p in removed)  # reported here, not twice
            action = "; ".join(_would(a, dry_run) for a in ["closed KILLED", *removed_(removed)])
            found.append(Found("run", name, _owner(tags), action))
        else:
            protected.update(scratch_paths(tags))
            why = {
                "alive": "running",
                "elsewhere": "owner on another host, cannot check",
                "unknown": "no owner recorded",
            }
            found.append(Found("run", name, _owner(tags), f"left: {why[state]}"))
    for path, pid in stray_scratch(root):
        if path.resolve() in protected or not path.exists():
            continue
        age = time.time() - path.lstat().st_mtime
        owner = "not recorded" if pid is None else str(pid)
        if pid is not None and lifecycle.pid_alive(pid):
            found.append(Found("folder", str(path), owner, "left: its process is running"))
        elif age < min_age:
            found.append(Found("folder", str(path), owner, f"left: only {age:.0f} s old"))
        else:
            if not dry_run:
                _remove(path)
            found.append(Found("folder", str(path), owner, _would("removed", dry_run)))
    return found


def stray_scratch(root: Path) -> list[tuple[Path, int | None]]:
    """Scratch folders and files under outputs/ and data/, with the pid in their name if any."""
    found = []
    for home in SCRATCH_HOMES:
        for folder, dirs, files in os.walk(root / home):
            for name in [*dirs, *files]:
                m = SCRATCH_NAME.match(name)
                if m:
                    found.append((Path(folder) / name, int(m["pid"]) if m["pid"] else None))
            dirs[:] = [d for d in dirs if not SCRATCH_NAME.match(d)]  # not inside scratch
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def removed_(paths: list[Path]) -> list[str]:
    return [f"removed {p}" for p in paths]


def _would(action: str, dry_run: bool) -> str:
    return f"would be {action}" if dry_run else action
