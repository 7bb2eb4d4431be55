"""The Optuna side of a sweep: its storage, its sampler, a trial's parameters, and the table of a
study's trials (`assay sweep status`). Optuna and pydantic only: no torch, Lightning or MLflow."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import TrialState

from assay.config import ConfigError
from assay.sweep.load import SweepError, get_key, safe_url
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
    if _holds_another_schema(url):
        # Optuna reads any alembic_version table as its own, and an MLflow store has one: it
        # would add its tables beside MLflow's and then fail on the schema "version"
        example = (
            "sqlite:///optuna.db" if url.startswith("sqlite") else "postgresql://USER@HOST/optuna"
        )
        raise SweepError(
            f"the Optuna storage {safe_url(url)} holds another program's tables (an MLflow store?) "
            f"and none of Optuna's: give the study a database of its own, e.g. --storage {example}"
        )
    # SQLite: waits out a writer instead of failing with "database is locked"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:///") else None
    return optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat)


def _holds_another_schema(url: str) -> bool:
    """A database versioned by alembic (as MLflow's store is) that has no Optuna study table."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    return "alembic_version" in tables and "studies" not in tables


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


def trials_table(study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                "epochs": len(t.intermediate_values),
                "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
                "seconds": None if seconds is None else round(seconds, 1),
                "overhead_s": t.user_attrs.get("overhead_s"),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "error": error_line(t.user_attrs["error"]) if "error" in t.user_attrs else None,
                **{f"params.{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def link_runs(study, ui: str, experiment_id: str, parent_id: str) -> None:
    """optuna-dashboard's notes (Markdown, shown on the study's and each trial's page): a link to
    the trial's MLflow run, and from the study to the sweep's parent run. A note someone already
    wrote stays; ours are rewritten only where the link changed (another `ui`)."""
    from optuna_dashboard import get_note, save_note  # ~1 s: in the driver, once per sweep

    from assay.tracking import ui_page

    def run_link(run_id: str) -> str:
        return ui_page(ui, experiment_id, run_id)

    def note(target, body: str) -> None:
        old = get_note(target)
        if old != body and (not old or old.startswith(LINK_NOTE)):
            save_note(target, body)

    note(study, f"{LINK_NOTE} [the sweep's parent run]({run_link(parent_id)}) in MLflow")
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("mlflow_run_id"):
            body = (
                f"{LINK_NOTE} [trial {t.number}'s run]({run_link(t.user_attrs['mlflow_run_id'])})"
            )
            note(optuna.Trial(study, t._trial_id), f"{body} in MLflow")


LINK_NOTE = "**MLflow:**"


def status(study_name: str, storage: str) -> list[dict[str, Any]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    if study_name not in names:
        raise SweepError(
            f"no study {study_name!r} in {storage}; studies there: {', '.join(names) or 'none'}"
        )
    return trials_table(optuna.load_study(study_name=study_name, storage=st))


def study_state(study) -> dict[str, int]:
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    return counts


def error_line(text: str | None) -> str:
    """A trial's error in one line: the last exception's message from its traceback."""
    lines = (text or "").strip().splitlines()
    # the last exception starts at the last unindented line (frames and code are indented)
    start = max((i for i, line in enumerate(lines) if line and not line[0].isspace()), default=0)
    return " ".join(line.strip() for line in lines[start:]) or "?"
