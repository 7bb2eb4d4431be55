"""Typed configuration: params.yaml, then an experiment file, then `--set a.b=value` overrides.

Everything is merged once and validated into `AssayConfig` before any data is read. A bad value is
a `ConfigError` whose message names each key path, the value given and what is allowed.


  common         StrictModel, ConfigError and how messages quote values
  architectures  each architecture's typed settings, presets and the data it trains on (no torch)
  schema         the sections (AssayConfig) and `validate`
  sections       tracking, ray, evaluate and register (schema's, kept apart for size)
  task           what a prepared data set gives a model (shapes, classes, statistics)
  loading   params.yaml <- experiment file <- overrides, YAML read safely
"""

from assay.config.common import ConfigError, StrictModel, describe_errors, section_model
from assay.config.loading import (
    MAX_YAML_NODES,
    Override,
    apply_overrides,
    experiment_path,
    load_config,
    parse_override,
    read_yaml,
    rekey,
    safe_yaml,
    with_overrides,
)
from assay.config.schema import (
    AssayConfig,
    FetchConfig,
    PrepareConfig,
    TrainConfig,
    config_digest,
    validate,
)
from assay.config.sections import (
    EvaluateConfig,
    RayConfig,
    RegisterConfig,
    TrackingConfig,
    WandbConfig,
)
from assay.config.task import Task

__all__ = [
    "MAX_YAML_NODES",
    "Override",
    "AssayConfig",
    "ConfigError",
    "StrictModel",
    "Task",
    "EvaluateConfig",
    "FetchConfig",
    "PrepareConfig",
    "RayConfig",
    "RegisterConfig",
    "TrackingConfig",
    "TrainConfig",
    "WandbConfig",
    "apply_overrides",
    "config_digest",
    "describe_errors",
    "experiment_path",
    "load_config",
    "parse_override",
    "read_yaml",
    "rekey",
    "safe_yaml",
    "section_model",
    "validate",
    "with_overrides",
]
