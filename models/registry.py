"""One registry of architectures (after timm's `_registry.py`).

An architecture is declared, torch-free, in `assay.config.architectures`: its typed settings, its
presets (`cnn` and `cnn_tiny`) and the data it trains on. `@register_model("cnn")` on a
LightningModule class binds the class to that declaration and to each of its presets: the class's
`Config` must be the declared settings class, and `OBJECTIVES` is set from the declaration (one
fact, one place). A class for an undeclared name, or a declaration bound twice, is refused.
`create_model(name, **cfg)` builds one; an unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from assay.config.architectures import (
    UnknownArchitectureError,
    get_architecture,
    list_architectures,
)

UnknownModelError = UnknownArchitectureError  # the name callers have caught since the start


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


def register_model(name: str):
    """Class decorator: bind the class to the architecture `name` declared in
    `assay.config.architectures`, and to its presets (`name_tiny`)."""

    def wrap(cls: type) -> type:
        arch = get_architecture(name)  # UnknownArchitectureError: declare it there first
        if getattr(cls, "Config", None) is not arch.settings:
            raise TypeError(
                f"{cls.__name__}.Config must be {arch.settings.__name__}, the settings "
                f"assay.config.architectures declares for {name!r}"
            )
        cls.OBJECTIVES = dict(arch.trains_on)
        for preset_name in list_architectures(family=name):
            if preset_name in _REGISTRY:
                raise ValueError(f"model {preset_name!r} is registered twice")
            preset = get_architecture(preset_name).preset
            _REGISTRY[preset_name] = ModelEntry(preset_name, name, cls, dict(preset))
        return cls

    return wrap


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        get_architecture(name)  # an unknown name: the error lists the known ones
        raise UnknownModelError(
            f"architecture {name!r} is declared in assay.config.architectures but no module in "
            "models/ registers it (@register_model)"
        ) from None


def create_model(
    name: str, *, task: Any, optim: Any = None, settings: BaseModel | None = None, **cfg: Any
):
    """Build the registered LightningModule `name` for a data `task` (shapes, classes).

    `settings` are its typed settings (a config's `train.arch_config()`); without them, `cfg`
    overrides the preset's. `optim` is an `OptimConfig` (None: defaults).
    """
    entry = get_entry(name)
    config = settings if settings is not None else entry.config(**cfg)
    return entry.module_cls(config=config, task=task, optim=optim)
