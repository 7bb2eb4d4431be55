"""One registry of architectures (after timm's `_registry.py`).

`@register_model("cnn", tiny={...})` on a LightningModule class registers two presets: `cnn` (the
class's config defaults) and `cnn_tiny` (defaults updated with `tiny`, for tests and smoke runs).
`create_model(name, **cfg)` builds one; an unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel


class UnknownModelError(KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # the architecture family, shared by a class's presets ("cnn" for cnn_tiny)
    module_cls: type
    preset: dict[str, Any] = field(default_factory=dict)

    @property
    def config_cls(self) -> type[BaseModel]:
        return self.module_cls.Config

    def config(self, **overrides: Any) -> BaseModel:
        """The architecture's validated config: preset values, then `overrides`."""
        return self.config_cls(**{**self.preset, **overrides})


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, tiny: dict[str, Any] | None = None):
    """Class decorator: register `name` and, with `tiny`, `name_tiny`. Duplicates are refused."""

    def wrap(cls: type) -> type:
        if not hasattr(cls, "Config"):
            raise TypeError(f"{cls.__name__} needs a nested pydantic `Config` to be registered")
        presets = {name: {}}
        if tiny is not None:
            presets[f"{name}_tiny"] = tiny
        for preset_name, preset in presets.items():
            if preset_name in _REGISTRY:
                raise ValueError(f"model {preset_name!r} is registered twice")
            _REGISTRY[preset_name] = ModelEntry(preset_name, name, cls, dict(preset))
        return cls

    return wrap


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown architecture {name!r}; known: {', '.join(list_models())}"
        ) from None


def create_model(name: str, *, task: Any, optim: Any = None, **cfg: Any):
    """Build the registered LightningModule `name` for a data `task` (shapes, classes).

    `cfg` overrides the preset's architecture config; `optim` is an `OptimConfig` (None:
    defaults).
    """
    entry = get_entry(name)
    return entry.module_cls(config=entry.config(**cfg), task=task, optim=optim)
