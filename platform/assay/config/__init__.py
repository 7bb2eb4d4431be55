"""Typed configuration: params.yaml, then an experiment file, then `--set a.b=value` overrides.

Everything is merged once and validated into `AssayConfig` before any data is read. A bad value is
a `ConfigError` whose message names each key path, the value given and what is allowed.


  common    ConfigError and how messages quote values
  schema    the sections (AssayConfig) and `validate`
  loading   params.yaml <- experiment file <- overrides, YAML read safely
"""

from assay.config.common import ConfigError, describe_errors
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
    EvaluateConfig,
    FetchConfig,
    PrepareConfig,
    RayConfig,
    RegisterConfig,
    TrackingConfig,
    TrainConfig,
    WandbConfig,
    validate,
)

__all__ = [
    "MAX_YAML_NODES",
    "Override",
    "AssayConfig",
    "ConfigError",
    "EvaluateConfig",
    "FetchConfig",
    "PrepareConfig",
    "RayConfig",
    "RegisterConfig",
    "TrackingConfig",
    "TrainConfig",
    "WandbConfig",
    "apply_overrides",
    "describe_errors",
    "experiment_path",
    "load_config",
    "parse_override",
    "read_yaml",
    "rekey",
    "safe_yaml",
    "validate",
    "with_overrides",
]
