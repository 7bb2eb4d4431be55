"""The Optuna side of a sweep: its storage, its sampler, and a trial's parameters."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import yaml

from assay.config import ConfigError
from assay.sweep.load import get_key
from assay.sweep.spec import CategoricalParam, FloatParam, IntParam, Param, SamplerConfig


def open_storage(url: str, heartbeat_interval=None, grace_period=None, on_stale=None):
    """An Optuna RDB storage (SQLite, PostgreSQL, ...); with `heartbeat_interval`, the running
    trials beat into it and `on_stale` is called for one that stopped beating. (Optuna 5's
    journal storage has no heartbeat: `load_sweep` refuses it.)"""
    beat = {
        "heartbeat_interval": heartbeat_interval,
        "grace_period": grace_period,
        "heartbeat_stale_trial_callback": on_stale,
    }
    if url.startswith("sqlite:///"):
        # waits out a writer instead of failing with "database is locked"
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": 60}}, **beat
        )
    return optuna.storages.RDBStorage(url, **beat)


def trial_seed(seed: int, offset: int) -> int:
    """The sampler seed of the `offset`-th trial of a study seeded `seed`: numpy's SeedSequence
    makes the streams of different (seed, offset) pairs independent."""
    if offset == 0:
        return seed  # the study's first trial samples as a single-process Optuna would
    return int(np.random.SeedSequence([seed, offset]).generate_state(1)[0])


def build_sampler(cfg: SamplerConfig, space: dict[str, Param], offset: int = 0, parallel: int = 1):
    """The sweep's sampler, for its `offset`-th trial (each trial is sampled in its own process,
    each with its own seed, or they would all sample the same startup points). With `parallel`
    trials at once, TPE plans with the running trials' parameters as if they had scored badly
    (constant liar), so trials side by side don't crowd one point."""
    # independent streams: seed + offset would give study seed 1 the points of seed 0 shifted
    seed = None if cfg.seed is None else trial_seed(cfg.seed, offset)
    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError(
                ["sweep.sampler.name: cmaes needs the cmaes package (pip install cmaes)"]
            ) from None
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=cfg.n_startup_trials)
    if cfg.name == "grid":
        grid = {}
        for key, p in space.items():
            if isinstance(p, CategoricalParam):
                grid[key] = p.choices
            elif isinstance(p, IntParam):
                grid[key] = list(range(p.low, p.high + 1, p.step))
            elif p.step:
                n = int(round((p.high - p.low) / p.step))
                grid[key] = [p.low + i * p.step for i in range(n + 1)]
            else:
                raise ConfigError(
                    [f"sweep.space.{key}: the grid sampler needs a step for floats, or choices"]
                )
        return optuna.samplers.GridSampler(grid, seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=cfg.n_startup_trials,
        multivariate=True,
        group=True,
        constant_liar=parallel > 1,
    )


def suggest(trial, space: dict[str, Param], base: dict) -> dict[str, Any]:
    """Sample the space in its order; a `when` on an earlier key (or a base setting) decides
    whether a parameter exists in this trial."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.when and any(values.get(k, get_key(base, k)) != v for k, v in p.when.items()):
            continue
        if isinstance(p, FloatParam):
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            values[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
        else:
            # Optuna's categoricals hold None, bool, int, float, str; lists go as their YAML
            labels = [
                c if plain(c) else yaml.safe_dump(c, default_flow_style=True).strip()
                for c in p.choices
            ]
            picked = trial.suggest_categorical(key, labels)
            values[key] = p.choices[labels.index(picked)]
    return values


def plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)
