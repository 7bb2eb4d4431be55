"""The DVC graph is the code each stage runs: a stage's code deps in dvc.yaml (and families/,
sweeps/) are exactly the modules its command imports, the CLI excepted, read from the source
(every import, inside functions too). So an edit to the CLI retrains nothing and an edit to the
scoring code re-scores without retraining (tests/test_pipeline.py does both with real DVC).
`fetch` has no code deps on purpose: its output is pinned by a sha256 in params.yaml, so no code
edit can change it, and none should download it again."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = {"assay": REPO / "platform/assay", "assay.models": REPO / "models"}
ENTRY = {  # what each `assay` subcommand runs, below the CLI
    "prepare": "assay.preparation",
    "train": "assay.training",
    "evaluate": "assay.evaluation",
    "register": "assay.registry",
    "sweep": "assay.sweep",
    "plots-template": "assay.plotpage",
}
# Declared differences from the import graph, each with its reason:
# Process bookkeeping (signals, owners of runs, closing abandoned ones): never in an output.
BOOKKEEPING = {"platform/assay/lifecycle.py", "platform/assay/orphans.py"}
IGNORED: dict[str, set[str]] = {}  # imported, but cannot change what the stage writes
EXTRA: dict[str, set[str]] = {}  # run, but reached through no import


def _file(module: str) -> Path | None:
    for name, folder in sorted(PACKAGES.items(), key=lambda kv: -len(kv[0])):
        if module == name or module.startswith(name + "."):
            base = folder.joinpath(*module[len(name) :].lstrip(".").split(".")).resolve()
            for path in (base.with_suffix(".py"), base / "__init__.py"):
                if path.is_file():
                    return path
    return None


def _imports(path: Path, module: str) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{up}.{base}" if base else up
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    parents = {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 1)}
    return {m for m in found | parents if _file(m)}


def closure(module: str) -> set[str]:
    """The repo files `module` imports, directly or not, as paths relative to the repo."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += _imports(_file(m), m)
    return {_file(m).relative_to(REPO).as_posix() for m in seen}


def _expand(dep: str) -> set[str]:
    path = REPO / dep
    if path.is_dir():
        return {p.relative_to(REPO).as_posix() for p in path.rglob("*.py")}
    return {dep}


def _stages():
    for dvc_file in ("dvc.yaml", "families/dvc.yaml", "sweeps/dvc.yaml"):
        for name, stage in yaml.safe_load((REPO / dvc_file).read_text())["stages"].items():
            stage = stage.get("do", stage)
            words = stage["cmd"].split()
            if words[0] == "assay" and words[1] in ENTRY:
                yield pytest.param(words[1], stage.get("deps", []), id=f"{dvc_file}:{name}")


@pytest.mark.parametrize("command, deps", list(_stages()))
def test_each_stage_depends_on_exactly_the_code_it_runs(command, deps):
    listed = set().union(*(_expand(d) for d in deps if d.split("/")[0] in ("platform", "models")))
    ignored = set().union(BOOKKEEPING, *(_expand(d) for d in IGNORED.get(command, ())))
    expected = (closure(ENTRY[command]) - ignored) | EXTRA.get(command, set())
    assert not listed - expected, f"deps the stage does not run: {sorted(listed - expected)}"
    assert not expected - listed, f"code it runs that is not a dep: {sorted(expected - listed)}"


def test_no_stage_depends_on_the_cli():
    for command in ENTRY:
        assert not any(f.startswith("platform/assay/cli/") for f in closure(ENTRY[command]))
    assert "platform/assay/evaluation.py" not in closure("assay.training")
