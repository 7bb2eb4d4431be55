"""One registry of architectures (after timm's `_registry.py`).

An architecture is declared, torch-free, in `assay.config.architectures`: its typed settings, its
presets (`cnn` and `cnn_tiny`) and the data it trains on. `@register_model("cnn")` on a
LightningModule class binds the class to that declaration and to each of its presets: the class's
`Config` must be the declared settings class, and `OBJECTIVES` is set from the declaration (one
fact, one place). A class for an undeclared name, or a declaration bound twice, is refused.
`create_model(name, **cfg)` builds one; an unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from assay.config.architectures import (
    Architecture,
    UnknownArchitectureError,
    get_architecture,
    list_architectures,
)

UnknownModelError = UnknownArchitectureError  # the name callers have caught since the start


@dataclass(frozen=True)
class ModelEntry:
    """A declared architecture (settings, preset, family, data) and the module that builds it:
    everything but the module is the declaration's, read from it, never copied."""

    architecture: Architecture
    module_cls: type

    @property
    def name(self) -> str:
        return self.architecture.name

    @property
    def family(self) -> str:  # shared by a declaration's presets ("cnn" for cnn_tiny)
        return self.architecture.family

    @property
    def preset(self) -> dict[str, Any]:
        return self.architecture.preset

    @property
    def config_cls(self) -> type[BaseModel]:
        return self.architecture.settings

    def config(self, **overrides: Any) -> BaseModel:
        """The architecture's validated config: preset values, then `overrides`."""
        return self.architecture.config(**overrides)


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
        cls.PRETRAINS = {kind: [o] for kind, o in arch.pretrains.items()}
        for preset_name in list_architectures(family=name):
            if preset_name in _REGISTRY:
                raise ValueError(f"model {preset_name!r} is registered twice")
            _REGISTRY[preset_name] = ModelEntry(get_architecture(preset_name), cls)
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
    name: str,
    *,
    task: Any,
    optim: Any = None,
    settings: BaseModel | None = None,
    objective: str = "auto",
    **cfg: Any,
):
    """Build the registered LightningModule `name` for a data `task` (shapes, classes).

    `settings` are its typed settings (a config's `train.arch_config()`); without them, `cfg`
    overrides the preset's. `optim` is an `OptimConfig` (None: defaults). `objective`: 'auto'
    (the one it serves on the task's data) or a self-supervised one it declares.
    """
    entry = get_entry(name)
    config = settings if settings is not None else entry.config(**cfg)
    return entry.module_cls(config=config, task=task, optim=optim, objective=objective)
