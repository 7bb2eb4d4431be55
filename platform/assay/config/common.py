"""What the config modules share: the strict base model, the error that lists every bad value, and
how a message quotes a value (cut short: never a whole, possibly huge, one)."""

from __future__ import annotations

import copy
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from assay.errors import UserError


class StrictModel(BaseModel):
    """Unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(UserError, ValueError):
    """One or more bad configuration values; the message lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def cut(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def short(value: Any, limit: int = 120) -> str:
    """`repr(value)`, cut to `limit` characters: an error message names a value, never prints a
    whole (possibly huge) one."""
    return cut(repr(value), limit)


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def describe_errors(err: ValidationError, model: type, prefix: str = "") -> list[str]:
    out = []
    for e in err.errors():
        loc = [cut(str(p), 60) for p in e["loc"]]
        path = ".".join(([prefix] if prefix else []) + loc)
        given = e.get("input")
        if e["type"] == "extra_forbidden":
            parent, allowed = allowed_keys(model, e["loc"][:-1])
            noun = getattr(parent, "unknown_key", "key")
            if noun != "key":  # a section keyed by a registry: train.models.<architecture>
                out.append(f"{path}: unknown {noun} {loc[-1]!r}; known: {allowed}")
            else:
                out.append(f"{path}: unknown key (value {short(given)}); allowed keys: {allowed}")
        elif e["type"] == "missing":
            out.append(f"{path}: required, but not given")
        elif isinstance(given, dict):  # a whole-section check: its message names the keys
            out.append(f"{path}: {cut(e['msg'].removeprefix('Value error, '))}")
        else:
            msg = cut(e["msg"].removeprefix("Value error, "))
            out.append(f"{path}: got {short(given)}; {msg}")
    return out


def allowed_keys(model: type, loc: tuple) -> tuple[type | None, str]:
    """The model at `loc` inside `model` and its field names, for 'unknown key' messages."""
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        inner = field and section_model(field.annotation)
        if inner is None:
            return None, "see params.yaml"
        model = inner
    return model, ", ".join(model.model_fields)


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (`X` or `X | None`), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    models = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None
