"""A sweep file read and checked before anything runs (`load_sweep`), and each trial's config."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from assay.config import (
    AssayConfig,
    ConfigError,
    apply_overrides,
    describe_errors,
    load_config,
    read_yaml,
    rekey,
    section_model,
    validate,
)
from assay.errors import UserError
from assay.paths import find_root
from assay.sweep.spec import CategoricalParam, SweepConfig, SweepFile


@dataclass
class Sweep:
    """A validated sweep: its settings, the base config every trial starts from, and where."""

    cfg: SweepConfig
    base: AssayConfig
    root: Path
    study: str
    storage: str
    path: Path | None = None

    @property
    def out(self) -> Path:
        return self.root / "outputs" / "sweeps" / self.study

    @property
    def direction(self) -> str:
        return self.cfg.objective.direction

    @property
    def mode(self) -> str:
        return "max" if self.direction == "maximize" else "min"


def sweep_path(name: str | Path, root: Path) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = root / "experiments" / "sweeps" / (p.name if p.suffix else f"{p.name}.yaml")
    if candidate.exists():
        return candidate
    known = sorted(f.stem for f in (root / "experiments" / "sweeps").glob("*.yaml"))
    raise ConfigError([f"sweep {str(name)!r} not found; known: {', '.join(known) or 'none'}"])


def load_sweep(
    path: str | Path,
    overrides: list[str] | None = None,
    root: Path | None = None,
    **settings: Any,
) -> Sweep:
    """Read and check a sweep file before anything runs: the file's own keys, the base config,
    and every point of the search space (each value must make a valid config)."""
    root = (root or find_root()).resolve()
    file = sweep_path(path, root)
    raw = read_yaml(file, "sweep file")
    if overrides:
        raw = apply_overrides(raw, overrides)
    for key, value in settings.items():  # --trials, --parallel: the command line wins
        if value is not None:
            raw.setdefault("sweep", {})[key] = value
    try:
        cfg = SweepFile.model_validate(raw).sweep
    except ValidationError as e:
        raise ConfigError([f"{file}: {p}" for p in describe_errors(e, SweepFile)]) from None
    base = load_config(cfg.experiment, [], root=root)
    if cfg.run:
        base = base.for_run(cfg.run)
    metric, direction = cfg.objective.metric, cfg.objective.direction
    monitor = f"{metric}:{'max' if direction == 'maximize' else 'min'}"
    try:
        base = validate(apply_overrides(base.model_dump(), [*cfg.set, ("train.monitor", monitor)]))
    except ConfigError as e:
        raise ConfigError([f"{file}: sweep.set: {p}" for p in e.problems]) from None
    problems = check_space(cfg, base)
    if base.train.refit or "train.refit" in cfg.space:
        problems.append(
            "train.refit: true in a sweep: trials are compared on val, which a refit trains "
            "on; leave it false here, then refit the best trial's settings with `assay train "
            "--refit`"
        )
    if problems:
        raise ConfigError([f"{file}: {p}" for p in problems])
    study = cfg.study or file.stem
    return Sweep(cfg, base, root, study, storage_url(cfg.storage, root), file)


def check_space(cfg: SweepConfig, base: AssayConfig) -> list[str]:
    """Each distribution's ends (or each choice) applied alone to the base must validate."""
    problems = []
    raw = base.model_dump()
    for key, p in cfg.space.items():
        if not has_setting(AssayConfig, raw, key.split(".")):
            problems.append(f"space.{key}: no such setting (a key path such as train.lr)")
            continue
        values = p.choices if isinstance(p, CategoricalParam) else [p.low, p.high]
        for value in values:
            try:
                validate(set_key(raw, key, value))
            except ConfigError as e:
                problems += [f"space.{key}: value {value!r} gives: {q}" for q in e.problems]
                break
        for when in p.when or {}:
            if when not in cfg.space and not has_setting(AssayConfig, raw, when.split(".")):
                problems.append(f"space.{key}.when: {when} is neither in the space nor a setting")
    return problems


def has_setting(model: Any, raw: Any, path: list[str]) -> bool:
    """Whether `path` names a setting: the schema's fields, typed all the way down (so
    train.models.<arch>.<key> is checked like any other key, whether or not the base sets that
    architecture's section), then, inside a free-form mapping (`runs`), the base's own keys."""
    for i, part in enumerate(path):
        if model is not None:
            field = model.model_fields.get(part)
            if field is None:
                return False
            model = section_model(field.annotation)
        else:
            if not isinstance(raw, dict) or part not in raw:
                return False
        raw = raw.get(part) if isinstance(raw, dict) else None
        if model is None and i < len(path) - 1 and not isinstance(raw, dict):
            return False
    return True


def set_key(raw: dict, key: str, value: Any) -> dict:
    return apply_overrides(raw, [(key, value)])  # the sampled value as it is, not as YAML text


def get_key(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def storage_url(storage: str | None, root: Path) -> str:
    if not storage:
        return f"sqlite:///{(root / 'optuna.db').resolve()}"
    return storage


def trial_config(sweep: Sweep, params: dict[str, Any], cpus: float) -> AssayConfig:
    base = sweep.base.model_dump()
    raw = base
    for key, value in params.items():
        raw = set_key(raw, key, value)
    raw = rekey(base, raw)  # a trial of another architecture registers under its own key
    if raw["train"]["workers"] == 0:
        raw["train"]["num_threads"] = max(1, int(cpus))  # trials side by side: no fighting
    return validate(raw)


class SweepError(UserError, RuntimeError):
    pass


def safe_url(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url
