"""`assay results`: every evaluated experiment's test metric beside its classical baseline on the
same split, from what DVC tracks (`dvc metrics show`: each outputs/<key>/metrics.json, in every
pipeline of the project), the objective of each run from its run.json and the baseline's name
from its evaluation's stamp (outputs/<key>/eval/run.json)."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from assay import lifecycle
from assay.errors import UserError
from assay.objectives import get_objective
from assay.paths import atomic_write_bytes


class ResultsError(UserError):
    """No metrics to show, or DVC could not read them."""


@dataclass
class Result:
    key: str
    metric: str  # the objective's primary test metric
    better: str  # "max" or "min"
    value: float
    baseline: str | None  # what the baseline is (None: the objective has none)
    baseline_value: float | None
    lift: float | None  # > 0: the model beats its baseline
    champion: bool | None = None  # what `register` decided (None: not registered yet)
    scored: str | None = None  # the day of its evaluation (UTC), from eval/run.json


def _dvc_metrics(root: Path) -> dict[str, dict]:
    cmd = [lifecycle.venv_command("dvc"), "metrics", "show", "--json"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ResultsError(f"`dvc metrics show` failed: {done.stderr.strip()[-500:]}")
    shown = json.loads(done.stdout or "{}")
    files = next(iter(shown.values()), {}).get("data", {})
    return {path: entry["data"] for path, entry in files.items() if "data" in entry}


def collect(root: Path) -> list[Result]:
    """One row per evaluated run, in the order DVC lists its metrics files."""
    rows = []
    for path, metrics in _dvc_metrics(root).items():
        folder = (root / path).resolve().parent  # outputs/<key>/
        info, stamp = folder / "model/run.json", folder / "eval/run.json"
        if not info.is_file():
            continue
        objective = json.loads(info.read_text()).get("objective")
        if objective is None:
            continue
        objective = get_objective(objective)
        metric, better = objective.primary
        if metric not in metrics:
            continue
        base = f"test/baseline/{metric.removeprefix('test/')}"
        scored = json.loads(stamp.read_text()) if stamp.is_file() else {}
        # an evaluation from before baselines existed: say so, not "none"
        name = scored.get("baseline", "not scored: run `assay evaluate` again")
        registered = folder / "registration.json"
        decision = json.loads(registered.read_text()) if registered.is_file() else {}
        scored_run = json.loads((folder / "metrics.json").read_text()).get("mlflow_run_id")
        if decision.get("mlflow_run_id") != scored_run:
            decision = {}  # a decision about an earlier run of this key: not this one's
        rows.append(
            Result(
                folder.name,
                metric,
                better,
                metrics[metric],
                name,
                metrics.get(base),
                metrics.get("test/lift"),
                decision.get("promoted"),
                _day(stamp) if stamp.is_file() else None,
            )
        )
    if not rows:
        raise ResultsError("no evaluated run yet: `dvc repro` (or `assay evaluate`) scores them")
    return rows


def _day(path: Path) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(path.stat().st_mtime))


def markdown(rows: list[Result]) -> str:
    """The README's table."""
    lines = [
        "| experiment | test metric | model | classical baseline (same split) | baseline | lift "
        "| champion | scored |",
        "|---|---|---:|---|---:|---:|:-:|---|",
    ]
    for r in rows:
        arrow = "higher" if r.better == "max" else "lower"
        cells = [
            r.key,
            f"{r.metric.removeprefix('test/')} ({arrow} is better)",
            f"{r.value:.4f}",
            r.baseline or "none",
            "" if r.baseline_value is None else f"{r.baseline_value:.4f}",
            "" if r.lift is None else f"{r.lift:+.4f}",
            {True: "yes", False: "no", None: ""}[r.champion],
            r.scored or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


START, END = "<!-- assay results --markdown: start -->", "<!-- assay results --markdown: end -->"


def _key(line: str) -> str:
    return line.strip().strip("|").split("|")[0].strip()


def merged(old: str, table: str) -> str:
    """`table` with the rows of `old` (a table this module wrote) for the experiments `table`
    lacks, in their places; `table`'s rows replace old rows of the same experiment and the rest
    follow. A row of an older table with fewer columns gets empty cells (its date unknown)."""
    head, new = table.splitlines()[:2], table.splitlines()[2:]
    width = head[0].count("|")
    fresh = {_key(line): line for line in new}
    rows = []
    for line in old.splitlines()[2:]:
        if not line.startswith("|"):
            continue
        key = _key(line)
        line = fresh.pop(key, line)
        rows.append(line + " |" * (width - line.count("|")))
    rows += fresh.values()
    return "\n".join([*head, *rows]) + "\n"


def write_into(path: Path, table: str, keep_rows: bool = False) -> None:
    """Replace the table between the START and END markers of `path` (the README) with `table`,
    so that the README's numbers are what the metrics say, never typed by hand. `keep_rows`:
    keep the rows of experiments `table` lacks (scored elsewhere, or earlier: each row's
    `scored` column says when), so a project that re-ran some stages updates only theirs."""
    text = path.read_bytes().decode()  # its own line endings kept
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ResultsError(
            f"{path} needs one line `{START}` and, after it, one line `{END}` around the table"
        )
    head, rest = text.split(START)
    old, tail = rest.split(END)
    if keep_rows:
        table = merged(old.strip("\n"), table)
    mode = path.stat().st_mode & 0o7777
    atomic_write_bytes(path, f"{head}{START}\n{table}{END}{tail}".encode())
    path.chmod(mode)  # the new file is the old one's: not mkstemp's 0600
