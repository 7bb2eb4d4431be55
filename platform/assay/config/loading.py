"""Reading a config: params.yaml, then an experiment file, then `--set a.b=value` overrides, merged
once; YAML read safely (aliases that would expand past a limit are refused)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from assay.config.common import ConfigError, deep_merge, short
from assay.config.schema import KEY_PATTERN, AssayConfig, run_train, validate
from assay.paths import find_root

# A YAML alias repeats a node without copying it, so nested aliases (a "billion laughs" file of a
# few KB) become billions of values as soon as anything walks the data, as validation does. PyYAML
# sets no limit of its own: the composed node graph is measured as it would expand, and refused
# past this many nodes, before any Python object is built from it. params.yaml has ~400.
MAX_YAML_NODES = 100_000


def safe_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand past `MAX_YAML_NODES` nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise ConfigError(
                [
                    f"{what}: its aliases (*name) expand to {_count(size)} values, more than the "
                    f"{MAX_YAML_NODES:,} allowed; write the values out, or use fewer nested aliases"
                ]
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes in `node` once every alias is expanded (shared nodes counted each time used)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:  # an alias inside its own anchor: expands without end
        return MAX_YAML_NODES + 1
    open_.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes, open_)
        if total > MAX_YAML_NODES:
            break
    open_.discard(key)
    sizes[key] = total
    return total


def _count(n: int) -> str:
    return f"over {MAX_YAML_NODES:,}" if n > MAX_YAML_NODES else f"{n:,}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=0.01` -> (["train", "lr"], 0.01); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError([f"--set {short(text)}: expected KEY.PATH=VALUE, e.g. train.lr=0.01"])
    try:
        parsed = safe_yaml(value, f"--set {key}") if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError([f"--set {key}: cannot parse value {short(value)}: {e}"]) from None
    return path, parsed


# An override: `--set KEY.PATH=VALUE` text (its value parsed as YAML), or a typed one, (KEY.PATH,
# value), from a command-line flag or code: applied as it is, never printed and parsed again.
Override = str | tuple[str, Any]


def apply_overrides(raw: dict, overrides: list[Override]) -> dict:
    out = copy.deepcopy(raw)
    for item in overrides:
        if isinstance(item, tuple):
            key, value = item
            path, label = key.split("."), key
        else:
            (path, value), label = parse_override(item), f"--set {short(item)}"
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError([f"{label}: {where} is {short(nxt)}, not a section"])
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: Path, what: str) -> dict:
    try:
        data = safe_yaml(path.read_text(), f"{what} {path}") or {}
    except FileNotFoundError:
        raise ConfigError([f"{what} {path} does not exist"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{what} {path} is not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{what} {path}: expected a mapping of sections, got {type(data).__name__}"]
        )
    return data


def experiment_path(name: str | Path, root: Path) -> Path:
    """`mnist-cnn`, `mnist-cnn.yaml` or a path -> the experiment file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = root / "experiments" / (p.name if p.suffix else f"{p.name}.yaml")
    if candidate.exists():
        return candidate
    known = sorted(f.stem for f in (root / "experiments").glob("*.yaml"))
    raise ConfigError([f"experiment {str(name)!r} not found; known: {', '.join(known) or 'none'}"])


def load_config(
    experiment: str | Path | None = None,
    overrides: list[Override] | None = None,
    *,
    params: Path | None = None,
    root: Path | None = None,
    require: tuple[str, ...] = (),
) -> AssayConfig:
    """params.yaml (if present) <- experiment file <- overrides, validated.

    `require`: the sections the calling command reads; each must be in params.yaml or the
    experiment file, and not empty (an emptied params.yaml must not train on built-in defaults).
    An experiment's run is keyed by the file's name (`train.name`) unless the file names it. An
    experiment file with `run: NAME` starts from params.yaml's `runs.NAME` (what `dvc repro`
    trains, and where DVC tracks it) instead of repeating its settings."""
    root = root or find_root()
    params = params or root / "params.yaml"
    raw = read_yaml(params, "params file") if params.exists() else {}
    exp_file, exp_raw = None, {}
    if experiment:
        exp_file = experiment_path(experiment, root)
        exp_raw = read_yaml(exp_file, "experiment file")
    _check_required(require, params, raw, exp_file, exp_raw)
    if exp_file is not None:
        if "run" in exp_raw:
            raw = _with_run(raw, exp_raw.pop("run"), exp_file)
        raw = deep_merge(raw, exp_raw)
        if not (exp_raw.get("train") or {}).get("name"):
            raw.setdefault("train", {})["name"] = _key_of(exp_file)
    return validate(apply_overrides(raw, overrides or []))


def _with_run(raw: dict, name: Any, exp_file: Path) -> dict:
    """params.yaml's `runs.NAME` over its `train`, for an experiment file that says `run: NAME`."""
    runs = raw.get("runs") or {}
    if not isinstance(name, str) or name not in runs:
        known = ", ".join(runs) or "none"
        raise ConfigError([f"{exp_file}: run: {short(name)} is not a run of params.yaml ({known})"])
    train = run_train({**(raw.get("train") or {}), "name": name}, runs[name] or {})
    return {**raw, "train": train}


def _check_required(require, params: Path, raw: dict, exp_file, exp_raw: dict) -> None:
    problems = []
    if require and not params.exists():
        problems.append(
            f"{params} does not exist: Assay reads its settings from the project's params.yaml; "
            "run this from the project folder (or one below it)"
        )
    else:
        for section in require:
            given = raw.get(section) or (exp_raw or {}).get(section)
            if isinstance(given, dict) and given:
                continue
            if not raw:
                state = "is empty"
            elif section not in raw:
                state = f"has no `{section}` section"
            else:
                state = f"has an empty `{section}` section"
            also = f" and {exp_file} has none" if exp_file else ""
            problems.append(
                f"{params} {state}{also}: this command reads `{section}`; restore it "
                f"(`git checkout {params.name}`) or give an experiment file that has it (-e NAME)"
            )
    if problems:
        raise ConfigError(problems)


def _key_of(exp_file: Path) -> str:
    if not re.match(KEY_PATTERN, exp_file.stem):
        raise ConfigError(
            [
                f"experiment file {exp_file}: its name {short(exp_file.stem)} is the run's key "
                "(outputs/<key>/ and the registered model's name): use letters, digits, '_', "
                "'.' and '-' only, or set train.name in the file"
            ]
        )
    return exp_file.stem


def rekey(before: dict, after: dict) -> dict:
    """`after` (a raw config: `before` with overrides) keeps `before`'s run key unless the
    overrides changed the data set, the architecture or the objective without naming the run:
    then it is no longer that run (its outputs and registered model would be another's), and its
    key falls back to <dataset>-<arch>[-<objective>]."""
    b, a = before.get("train", {}), after.get("train", {})
    changed = any(b.get(k) != a.get(k) for k in ("dataset", "arch", "objective"))
    if changed and b.get("name") and a.get("name") == b.get("name"):
        after = {**after, "train": {**a, "name": None}}
    return after


def with_overrides(cfg: AssayConfig, overrides: list[Override]) -> AssayConfig:
    """`cfg` with overrides (`--set KEY=VALUE` text or typed pairs) applied and validated (see
    `rekey`)."""
    raw = cfg.model_dump()
    return validate(rekey(raw, apply_overrides(raw, overrides)))
