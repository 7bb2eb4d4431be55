"""Hyperparameter sweeps: an Optuna study whose trials train on Ray, tracked in MLflow and W&B.

    assay sweep -e experiments/sweeps/mnist-cnn.yaml [--trials 40] [--parallel 2] [--resume]

The sweep file (`SweepFile`) names a base experiment, the objective, the search space, the sampler,
the pruner and the budget. The driver (this process) owns the study: it asks Optuna for a trial,
samples its parameters (define-by-run, so a parameter can depend on another: `when:`), and hands
the trial to a Ray task, `parallel` at a time. Each task trains with `assay.training.train` (the
same code as `assay train`; with `train.workers > 0`, on Ray Train), reporting the objective to
the study every epoch; the pruner may stop it early. The driver tells Optuna the outcome.

Persistence: the study lives in `sweep.storage` (default `sqlite:///<root>/optuna.db`; an RDB URL
such as postgresql://... for many machines, or `journal:PATH` for Optuna's journal file). A killed
driver leaves trials RUNNING; `--resume` marks them failed (and their MLflow runs KILLED), queues
the same parameters again, and carries on until `trials` trials are complete or pruned.

Tracking: one MLflow parent run per sweep (best value, best params, Optuna's plots), one child run
per trial (its params, per-epoch metrics, `trial.state`: complete / pruned / failed). W&B: one run
per trial, grouped under the study's name, plus the sweep's own run in the group. At the end,
`outputs/sweeps/<study>/best_params.yaml` and `metrics.json` (DVC outputs), and the best trial's
model is registered through the same champion gate as every other model.

Failures: what every trial needs (prepared data, a model for it, the GAN's registered judge, local
GPUs: `training.preflight`) is checked once in the driver before the study, MLflow or Ray is
touched. A sweep with no complete trial (all failed or pruned) ends its parent run FAILED, writes
no `best_params.yaml` or `metrics.json` (removing an earlier run's), and `assay sweep` exits 1.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from assay import tracking
from assay.config import (
    AssayConfig,
    ConfigError,
    _describe,
    _read_yaml,
    apply_overrides,
    load_config,
    rekey,
    validate,
)
from assay.models.base import StrictModel
from assay.paths import atomic_dir, atomic_write_bytes, atomic_write_json, csv_bytes, find_root
from assay.trial import TrialContext, build_pruner


# ------------------------------------------------------------------------------------- the file
class _Param(StrictModel):
    when: dict[str, Any] | None = Field(
        None,
        description="sample only when these keys (sampled earlier, or the base config's) have "
        "these values, e.g. {train.arch: cnn}",
    )


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("a log-scaled float takes no step")
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("a log-scaled int takes step 1")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0, got {low}")


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class ObjectiveConfig(StrictModel):
    metric: str = Field("val/acc", pattern=r"^val/.+", description="a val/ metric the model logs")
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerConfig(StrictModel):
    name: Literal["tpe", "random", "cmaes", "grid"] = "tpe"
    seed: int | None = Field(0, description="the sampler's seed; null: a random one")
    n_startup_trials: int = Field(5, ge=0, description="tpe, cmaes: random trials first")


class PrunerConfig(StrictModel):
    name: Literal["hyperband", "asha", "median", "threshold", "none"] = "hyperband"
    min_resource: int = Field(1, ge=1, description="hyperband, asha: epochs before a first cut")
    reduction_factor: int = Field(3, ge=2, description="hyperband, asha: keep 1 in this many")
    n_startup_trials: int = Field(5, ge=0, description="median: trials before it prunes")
    n_warmup_steps: int = Field(1, ge=0, description="median: epochs before it prunes a trial")
    lower: float | None = Field(None, description="threshold: prune below this value")
    upper: float | None = Field(None, description="threshold: prune above this value")


class SweepConfig(StrictModel):
    experiment: str | None = Field(None, description="the base: experiments/NAME.yaml")
    run: str | None = Field(None, description="or a run of params.yaml's `runs`")
    set: list[str] = Field(default=[], description="fixed KEY=VALUE overrides for every trial")
    study: str | None = Field(None, description="the Optuna study's name; default: file name")
    objective: ObjectiveConfig = ObjectiveConfig()
    space: dict[str, Param] = Field(min_length=1, description="KEY.PATH -> distribution")
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    trials: int | None = Field(20, ge=1, description="trials to finish (complete or pruned)")
    timeout: float | None = Field(None, gt=0, description="seconds; no new trial after it")
    parallel: int = Field(1, ge=1, le=1024, description="trials at once (Ray tasks)")
    cpus_per_trial: float = Field(1.0, gt=0, description="each trial's CPUs and torch threads")
    storage: str | None = Field(None, description="Optuna storage; default sqlite <root>/optuna.db")
    register_best: bool = Field(True, description="register the best trial's model (champion gate)")

    @model_validator(mode="after")
    def _budget(self) -> SweepConfig:
        if self.trials is None and self.timeout is None:
            raise ValueError("give a budget: trials, timeout, or both")
        if self.experiment and self.run:
            raise ValueError("give experiment or run, not both")
        return self


class SweepFile(StrictModel):
    sweep: SweepConfig


# ------------------------------------------------------------------------------------- loading
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
    raw = _read_yaml(file, "sweep file")
    if overrides:
        raw = apply_overrides(raw, overrides)
    for key, value in settings.items():  # --trials, --parallel: the command line wins
        if value is not None:
            raw.setdefault("sweep", {})[key] = value
    try:
        cfg = SweepFile.model_validate(raw).sweep
    except ValidationError as e:
        raise ConfigError([f"{file}: {p}" for p in _describe(e, SweepFile)]) from None
    base = load_config(cfg.experiment, [], root=root)
    if cfg.run:
        base = base.for_run(cfg.run)
    metric, direction = cfg.objective.metric, cfg.objective.direction
    monitor = f"{metric}:{'max' if direction == 'maximize' else 'min'}"
    try:
        base = validate(apply_overrides(base.model_dump(), [*cfg.set, f"train.monitor={monitor}"]))
    except ConfigError as e:
        raise ConfigError([f"{file}: sweep.set: {p}" for p in e.problems]) from None
    problems = _check_space(cfg, base)
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


def _check_space(cfg: SweepConfig, base: AssayConfig) -> list[str]:
    """Each distribution's ends (or each choice) applied alone to the base must validate."""
    problems = []
    raw = base.model_dump()
    for key, p in cfg.space.items():
        if not _exists(raw, key.split(".")):
            problems.append(f"space.{key}: no such setting (a key path such as train.lr)")
            continue
        values = p.choices if isinstance(p, CategoricalParam) else [p.low, p.high]
        for value in values:
            try:
                validate(_set(raw, key, value))
            except ConfigError as e:
                problems += [f"space.{key}: value {value!r} gives: {q}" for q in e.problems]
                break
        for when in p.when or {}:
            if when not in cfg.space and not _exists(raw, when.split(".")):
                problems.append(f"space.{key}.when: {when} is neither in the space nor a setting")
    return problems


def _exists(raw: dict, path: list[str]) -> bool:
    node: Any = raw
    for i, part in enumerate(path):
        if not isinstance(node, dict):
            return False
        if part not in node:
            # train.models.<arch>.<field>: the arch section may be absent from the base
            return i >= 2 and path[:2] == ["train", "models"]
        node = node[part]
    return True


def _set(raw: dict, key: str, value: Any) -> dict:
    return apply_overrides(raw, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])


def _get(raw: dict, key: str) -> Any:
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


def open_storage(url: str):
    """An Optuna storage: an RDB URL, or `journal:PATH` for the journal file storage."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url.removeprefix("journal:")))
    if url.startswith("sqlite:///"):
        # waits out a writer instead of failing with "database is locked"
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def build_sampler(cfg: SamplerConfig, space: dict[str, Param]):
    import optuna

    if cfg.name == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if cfg.name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError(
                ["sweep.sampler.name: cmaes needs the cmaes package (pip install cmaes)"]
            ) from None
        return optuna.samplers.CmaEsSampler(seed=cfg.seed, n_startup_trials=cfg.n_startup_trials)
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
        return optuna.samplers.GridSampler(grid, seed=cfg.seed)
    return optuna.samplers.TPESampler(
        seed=cfg.seed, n_startup_trials=cfg.n_startup_trials, multivariate=True, group=True
    )


def suggest(trial, space: dict[str, Param], base: dict) -> dict[str, Any]:
    """Sample the space in its order; a `when` on an earlier key (or a base setting) decides
    whether a parameter exists in this trial."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.when and any(values.get(k, _get(base, k)) != v for k, v in p.when.items()):
            continue
        if isinstance(p, FloatParam):
            values[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            values[key] = trial.suggest_int(key, p.low, p.high, log=p.log, step=p.step)
        else:
            # Optuna's categoricals hold None, bool, int, float, str; lists go as their YAML
            labels = [
                c if _plain(c) else yaml.safe_dump(c, default_flow_style=True).strip()
                for c in p.choices
            ]
            picked = trial.suggest_categorical(key, labels)
            values[key] = p.choices[labels.index(picked)]
    return values


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def trial_config(sweep: Sweep, params: dict[str, Any], cpus: float) -> AssayConfig:
    base = sweep.base.model_dump()
    raw = base
    for key, value in params.items():
        raw = _set(raw, key, value)
    raw = rekey(base, raw)  # a trial of another architecture registers under its own key
    if raw["train"]["workers"] == 0:
        raw["train"]["num_threads"] = max(1, int(cpus))  # trials side by side: no fighting
    return validate(raw)


# ---------------------------------------------------------------------------------- one trial
def run_trial(cfg_json: dict, ctx_json: dict, root: str) -> dict[str, Any]:
    """A Ray task: train one trial. Returns its outcome; never raises for a training error (the
    traceback comes back as `error`, and the trial's MLflow run is FAILED)."""
    ctx = TrialContext.load(ctx_json)
    ctx.started = time.time()
    from assay.trial import die_with_driver

    die_with_driver(ctx)
    import logging
    import traceback
    import warnings

    # One line per trial comes from the driver; Lightning's banners from every trial would bury it.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|logging interval|litlogger).*")

    from assay.training import train
    from assay.trial import run_options

    try:
        cfg = validate(cfg_json)
        result = train(cfg, Path(root), run_options(ctx))
    except Exception as e:  # the driver records it; other trials go on
        return {
            "number": ctx.number,
            "state": "failed",
            "error": "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:],
        }
    return {
        "number": ctx.number,
        "state": result.outcome["trial.state"],
        "value": result.metrics.get(ctx.metric),
        "epochs": result.epochs,
        "run_id": result.run_id,
        "wandb_id": result.wandb_id,
        "seconds": result.seconds,
    }


# ------------------------------------------------------------------------------------ the driver
@dataclass
class SweepResult:
    study: str
    storage: str
    parent_run_id: str
    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    seconds: float
    epochs: int
    registration: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    error: str | None = None  # no trial complete: why (the parent run is FAILED, no best params)


def _study_state(study) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    return counts


def _finished(study) -> int:
    """Trials that count toward the budget: complete, pruned, or failed by an error (not those
    a killed driver left behind: they are retried)."""
    from optuna.trial import TrialState

    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            n += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"):
            n += 1
    return n


def fail_interrupted(study, client, metric: str) -> tuple[list[int], list[int]]:
    """Trials a stopped driver left RUNNING. One whose training finished anyway (its MLflow run
    FINISHED: a trial on another node outlived the driver) is adopted: told to Optuna as its run
    ended, complete or pruned. The others are FAILED, their MLflow runs KILLED, and their
    parameters queued again. Returns (failed, adopted) trial numbers."""
    from optuna.trial import TrialState

    storage = study._storage  # noqa: SLF001  (ask-and-tell: the driver owns the storage)
    failed, adopted = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = t._trial_id  # noqa: SLF001
        run = _child_run(client, study, t)
        tags = run.data.tags if run else {}
        # Adopted only if its outputs were written whole (run.json last of them): Lightning's
        # MLflow logger marks the run FINISHED when the fit ends, before the outputs exist.
        out = _trial_out(study, t)
        if (
            run
            and run.info.status == "FINISHED"
            and tags.get("trial.state") in ("complete", "pruned")
            and out is not None
            and (out / "model" / "run.json").exists()
            and (out / "history.csv").exists()
        ):
            storage.set_trial_user_attr(tid, "mlflow_run_id", run.info.run_id)
            if tags["trial.state"] == "pruned":
                last = max(t.intermediate_values, default=None)
                value = None if last is None else t.intermediate_values[last]
                storage.set_trial_state_values(
                    tid, TrialState.PRUNED, None if value is None else [value]
                )
            else:
                storage.set_trial_state_values(
                    tid, TrialState.COMPLETE, [run.data.metrics[f"best_{metric}"]]
                )
            adopted.append(t.number)
            continue
        storage.set_trial_user_attr(tid, "interrupted", True)
        if run is not None:
            storage.set_trial_user_attr(tid, "mlflow_run_id", run.info.run_id)
        storage.set_trial_state_values(tid, TrialState.FAIL)
        if run is not None:
            if run.info.status in ("RUNNING", "SCHEDULED", "FINISHED"):
                client.set_tag(run.info.run_id, "trial.state", "failed")
                client.set_tag(
                    run.info.run_id, "error", "the sweep driver stopped during this trial"
                )
                client.set_terminated(run.info.run_id, "KILLED")
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        failed.append(t.number)
    return failed, adopted


def _trial_out(study, t) -> Path | None:
    sweep = study.user_attrs.get("sweep_out")
    return Path(sweep) / "trials" / f"trial-{t.number}" if sweep else None


def _child_run(client, study, t):
    """The MLflow run of trial `t` (a child of the sweep's run), or None if it never started."""
    parent = study.user_attrs.get("mlflow_parent_run_id")
    run_id = t.user_attrs.get("mlflow_run_id")
    if run_id:
        return client.get_run(run_id)
    if parent is None:
        return None
    exps = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(
        exps,
        f"tags.mlflow.parentRunId = '{parent}' and tags.`optuna.trial` = '{t.number}'",
        max_results=1,
    )
    return found[0] if found else None


class SweepError(RuntimeError):
    pass


def preflight(sweep: Sweep) -> None:
    """Check once, on the base config in this process, what every trial would otherwise fail on
    (the data prepared, a model for it, the GAN's judge registered, local GPUs): the same checks
    `assay train` makes before its run. A failure leaves no study, no MLflow run, no outputs."""
    from assay import training

    training.preflight(sweep.base, sweep.root)


def _error_line(text: str | None) -> str:
    """A trial's error in one line: the last exception's message from its traceback."""
    lines = (text or "").strip().splitlines()
    # the last exception starts at the last unindented line (frames and code are indented)
    start = max((i for i, line in enumerate(lines) if line and not line[0].isspace()), default=0)
    return " ".join(line.strip() for line in lines[start:]) or "?"


def run_sweep(
    sweep: Sweep, *, resume: bool = False, fresh: bool = False, console=None
) -> SweepResult:
    """Run (or, with `resume`, continue) the study until its budget is spent; then summarise,
    plot and register. Ctrl-C stops the running trials (FAILED, KILLED in MLflow). `fresh`:
    delete the study's earlier trials first (what `dvc repro` does: a new sweep each time; the
    earlier MLflow runs stay)."""
    import warnings

    import optuna
    import ray

    from assay import distributed

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's `group` (for conditional spaces) is marked experimental since Optuna 2.8
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg = sweep.cfg
    preflight(sweep)  # before the study, MLflow or Ray is touched
    started = time.perf_counter()
    storage = open_storage(sweep.storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if fresh and resume:
        raise SweepError("--fresh starts the study over and --resume continues it: pick one")
    if fresh and sweep.study in names:
        optuna.delete_study(study_name=sweep.study, storage=storage)
        names.remove(sweep.study)
        import shutil

        shutil.rmtree(sweep.out / "trials", ignore_errors=True)
    n = (
        len(optuna.load_study(study_name=sweep.study, storage=storage).trials)
        if (sweep.study in names)
        else 0
    )
    if n and not resume:
        raise SweepError(
            f"study {sweep.study!r} already exists in {sweep.storage} ({n} trials): continue it "
            "with --resume, or name a new one (sweep.study, or --set sweep.study=NAME)"
        )
    if resume and sweep.study not in names:
        raise SweepError(
            f"no study {sweep.study!r} in {sweep.storage} to resume; "
            f"studies there: {', '.join(names) or 'none'}"
        )
    study = optuna.create_study(
        study_name=sweep.study,
        storage=storage,
        sampler=build_sampler(cfg.sampler, cfg.space),
        pruner=build_pruner(cfg.pruner.model_dump()),
        direction=cfg.objective.direction,
        load_if_exists=True,  # new, resumed, or one that never got to its first trial
    )
    # The store exists before any trial runs in parallel (a new SQLite store created by two
    # processes at once breaks its migration; see PITFALLS).
    uri = tracking.tracking_uri(sweep.base.tracking, sweep.root)
    client = tracking.ensure_store(uri)
    exp_id = tracking.experiment_id(client, sweep.base.tracking.experiment, sweep.root, uri)
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None:
        parent = client.create_run(
            exp_id,
            run_name=f"sweep-{sweep.study}",
            tags={
                "optuna.study": sweep.study,
                "optuna.storage": _safe_url(sweep.storage),
                "assay.sweep": str(sweep.path or ""),
                "assay.key": sweep.base.train.key,
                **tracking.git_info(sweep.root),
            },
        )
        parent_id = parent.info.run_id
        study.set_user_attr("mlflow_parent_run_id", parent_id)
        study.set_user_attr("sweep", cfg.model_dump(mode="json"))
        study.set_user_attr("sweep_out", str(sweep.out))
        _log_sweep_params(client, parent_id, sweep)
    else:
        client.update_run(parent_id, status="RUNNING")
        with contextlib.suppress(Exception):  # an earlier run that failed: not this one (yet)
            client.delete_tag(parent_id, "error")
    say = console.print if console else (lambda *a, **k: None)
    if resume:
        retried, adopted = fail_interrupted(study, client, cfg.objective.metric)
        if retried:
            say(
                f"resumed: trials {', '.join(map(str, retried))} were running when the driver "
                "stopped; marked failed, their parameters queued again"
            )
        if adopted:
            say(
                f"resumed: trials {', '.join(map(str, adopted))} finished after the driver "
                "stopped; their results are kept"
            )
    shared_tags = tracking.provenance(sweep.root, sweep.base.train.dataset)
    base_raw = sweep.base.model_dump()
    uses_ray_train = sweep.base.train.workers > 0
    cpus = cfg.cpus_per_trial
    task = ray.remote(run_trial).options(
        # a trial on Ray Train only orchestrates: its workers hold the CPUs
        num_cpus=0 if uses_ray_train else cpus,
        max_retries=0,
    )
    deadline = time.time() + cfg.timeout if cfg.timeout else math.inf
    budget = cfg.trials if cfg.trials is not None else math.inf
    pending: dict[Any, Any] = {}
    status = "FINISHED"
    # What a local Ray offers: CPUs for `parallel` trials at once (at least the machine's).
    per_trial = sweep.base.train.workers if uses_ray_train else 1
    offer = {"workers": cfg.parallel * per_trial}
    if not uses_ray_train:
        offer["cpus_per_worker"] = cpus
    ray_cfg = sweep.base.model_copy(update={"train": sweep.base.train.model_copy(update=offer)})
    try:
        # Trials that are plain Ray tasks need no dashboard; it costs the trials CPU.
        with distributed.ray_session(ray_cfg, dashboard=uses_ray_train):
            while True:
                room = budget - _finished(study) - len(pending)
                while len(pending) < cfg.parallel and room > 0 and time.time() < deadline:
                    trial = study.ask()
                    params = suggest(trial, cfg.space, base_raw)
                    ctx = TrialContext(
                        study=sweep.study,
                        storage=sweep.storage,
                        trial_id=trial._trial_id,  # noqa: SLF001  (a worker rebuilds the Trial)
                        number=trial.number,
                        metric=cfg.objective.metric,
                        pruner=cfg.pruner.model_dump(),
                        parent_run_id=parent_id,
                        out_dir=str(sweep.out / "trials" / f"trial-{trial.number}"),
                        params=params,
                        tags=shared_tags,
                        driver=(socket.gethostname(), os.getpid()),
                    )
                    try:
                        tcfg = trial_config(sweep, params, cpus)
                    except ConfigError as e:  # a combination the per-key check could not see
                        trial.set_user_attr("error", str(e)[-2000:])
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        say(f"[red]trial {trial.number} failed[/]: {e}")
                        continue
                    trial.set_user_attr("params_yaml", yaml.safe_dump(params, sort_keys=False))
                    ref = task.remote(tcfg.model_dump(mode="json"), ctx.dump(), str(sweep.root))
                    pending[ref] = trial
                    say(f"trial {trial.number} started: {_fmt_params(params)}")
                    room -= 1
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                trial = pending.pop(done[0])
                try:
                    out = ray.get(done[0])
                except Exception as e:  # the task itself died (OOM, node lost, ...)
                    out = {"number": trial.number, "state": "failed", "error": str(e)}
                _tell(study, trial, out, client, say, sweep)
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        if status == "FAILED":
            client.set_tag(parent_id, "error", f"{type(e).__name__}: {e}"[:5000])
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if pending:  # Ctrl-C: failed now, and queued again for a --resume
            fail_interrupted(study, client, cfg.objective.metric)
        client.set_terminated(parent_id, status)
        raise
    try:
        result = _summarise(sweep, study, client, parent_id, time.perf_counter() - started, say)
    except BaseException as e:
        client.set_tag(parent_id, "error", f"{type(e).__name__}: {e}"[:5000])
        client.set_terminated(parent_id, "FAILED")
        raise
    if result.error:  # no trial complete: nothing to call best
        client.set_tag(parent_id, "error", result.error[:5000])
        status = "FAILED"
    client.set_terminated(parent_id, status)
    tracking.ensure_store(uri)  # the caller's next MLflow call (register) goes to this store
    return result


def _tell(study, trial, out: dict, client, say, sweep: Sweep) -> None:
    from optuna.trial import TrialState

    n = trial.number
    run_id = out.get("run_id")
    if run_id:
        trial.set_user_attr("mlflow_run_id", run_id)
    if out["state"] == "failed":
        trial.set_user_attr("error", out.get("error", "")[-2000:])
        study.tell(trial, state=TrialState.FAIL)
        say(f"[red]trial {n} failed[/]: {_error_line(out.get('error'))}")
        return
    value = out.get("value")
    epochs = out.get("epochs", 0)
    trial.set_user_attr("epochs", epochs)
    if out["state"] == "pruned":
        frozen = study.tell(trial, state=TrialState.PRUNED)
        at = frozen.user_attrs.get("pruned_at_epoch")
        say(
            f"[yellow]trial {n} pruned at epoch {at}[/] ({sweep.cfg.objective.metric} "
            f"{_fmt(frozen.value)}, {out.get('seconds', 0):.0f} s)"
        )
    elif value is None or not math.isfinite(value):
        trial.set_user_attr("error", f"no finite {sweep.cfg.objective.metric}: {value}")
        study.tell(trial, state=TrialState.FAIL)
        say(f"[red]trial {n} failed[/]: no finite {sweep.cfg.objective.metric}")
    else:
        study.tell(trial, value)
        best = study.best_trial
        mark = " [green]new best[/]" if best.number == n else ""
        say(
            f"trial {n} complete: {sweep.cfg.objective.metric} {_fmt(value)} "
            f"({epochs} epochs, {out.get('seconds', 0):.0f} s){mark}"
        )


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _fmt_params(params: dict[str, Any]) -> str:
    def short(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in params.items())


def _safe_url(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url


def _log_sweep_params(client, run_id: str, sweep: Sweep) -> None:
    cfg = sweep.cfg
    params = {
        "study": sweep.study,
        "objective": f"{cfg.objective.metric} ({cfg.objective.direction})",
        "sampler": cfg.sampler.name,
        "pruner": cfg.pruner.name,
        "trials": cfg.trials,
        "timeout": cfg.timeout,
        "parallel": cfg.parallel,
        "base": cfg.experiment or cfg.run or "params.yaml",
        **{f"space.{k}": v.model_dump_json(exclude_none=True) for k, v in cfg.space.items()},
    }
    tracking.log_params(client, run_id, params)


# ----------------------------------------------------------------------------------- the summary
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
                "error": _error_line(t.user_attrs["error"]) if "error" in t.user_attrs else None,
                **{f"params.{k}": v for k, v in t.params.items()},
            }
        )
    return rows


def _summarise(sweep: Sweep, study, client, parent_id: str, seconds: float, say) -> SweepResult:
    from optuna.trial import TrialState

    counts = _study_state(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rows = trials_table(study)
    epochs = sum(r["epochs"] for r in rows)
    best = study.best_trial if complete else None
    best_params = {}
    if best is not None:
        best_params = yaml.safe_load(best.user_attrs.get("params_yaml", "{}")) or best.params
    metrics = {
        "best_value": best.value if best else None,
        "best_trial": best.number if best else None,
        "trials_complete": counts["complete"],
        "trials_pruned": counts["pruned"],
        "trials_failed": counts["fail"],
        "epochs_trained": epochs,
        "seconds": round(seconds, 1),
        "objective": sweep.cfg.objective.metric,
        "direction": sweep.cfg.objective.direction,
    }
    overheads = sorted(r["overhead_s"] for r in rows if r["overhead_s"] is not None)
    if overheads:
        metrics["overhead_s_median"] = overheads[len(overheads) // 2]
    files: list[str] = []
    with atomic_dir(sweep.out / "plots") as folder:
        files += [str(sweep.out / "plots" / p.name) for p in _plots(study, folder)]
        for p in sorted(folder.iterdir()):
            client.log_artifact(parent_id, str(p), "plots")
    atomic_write_bytes(sweep.out / "trials.csv", csv_bytes(rows) if rows else b"")
    client.log_artifact(parent_id, str(sweep.out / "trials.csv"))
    for k, v in metrics.items():
        if isinstance(v, int | float):
            client.log_metric(parent_id, k, float(v))
    for k, v in best_params.items():
        client.set_tag(parent_id, f"best.{k}", str(v))
    if best is None:  # no best: no DVC outputs claim one, not even an earlier run's
        for name in ("best_params.yaml", "metrics.json"):
            (sweep.out / name).unlink(missing_ok=True)
        error = _no_trial_complete(sweep, study, counts)
        args = (sweep.study, sweep.storage, parent_id, counts, None, None, {}, seconds, epochs)
        return SweepResult(*args, files=files, error=error)
    registration = None
    if best is not None:
        client.set_tag(parent_id, "best.mlflow_run_id", best.user_attrs.get("mlflow_run_id", ""))
        if sweep.cfg.register_best:
            registration = register_best(sweep, best, client, say)
            metrics.update({f"best_{k}": v for k, v in registration.pop("test", {}).items()})
    tracking.log_wandb_summary(
        sweep.base.tracking,
        sweep.root,
        None,
        f"sweep-{sweep.study}",
        metrics,
        {Path(f).stem: Path(f) for f in files if f.endswith(".png")},
        group=sweep.study,
        config={"sweep": sweep.cfg.model_dump(mode="json"), "best_params": best_params},
    )
    # DVC's outputs last, so a failure above leaves none behind; each names the sweep's run
    # and the best trial's (see assay.artifacts)
    runs = {
        "mlflow_parent_run_id": parent_id,
        "best_mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
    }
    metrics.update(runs)
    atomic_write_bytes(
        sweep.out / "best_params.yaml",
        yaml.safe_dump(
            {
                "study": sweep.study,
                "objective": metrics["objective"],
                "best_value": metrics["best_value"],
                **runs,
                "params": best_params,
            },
            sort_keys=False,
        ).encode(),
    )
    atomic_write_json(sweep.out / "metrics.json", metrics)
    return SweepResult(
        sweep.study,
        sweep.storage,
        parent_id,
        counts,
        best.number if best else None,
        best.value if best else None,
        best_params,
        seconds,
        epochs,
        registration,
        files,
    )


def _no_trial_complete(sweep: Sweep, study, counts: dict[str, int]) -> str:
    """Why a sweep has no best, and where to read more: the first failed trial's error."""
    from optuna.trial import TrialState

    text = f"no trial completed ({counts['fail']} failed, {counts['pruned']} pruned)"
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    # one the driver's stop interrupted (no error of its own) only if no trial has an error
    failed = [t for t in failed if "error" in t.user_attrs] or failed
    storage = f" --storage {_safe_url(sweep.storage)}" if sweep.cfg.storage else ""
    where = [f"`assay sweep status {sweep.study}{storage}`", str(sweep.out / "trials.csv")]
    if failed:
        first = failed[0]
        error = first.user_attrs.get("error") or "the sweep driver stopped during it"
        text += f"; trial {first.number} failed: {_error_line(error)}"
        if first.user_attrs.get("mlflow_run_id"):
            where.append(f"MLflow run {first.user_attrs['mlflow_run_id']} (error.txt)")
    elif counts["pruned"]:
        text += "; the pruner stopped every trial (is sweep.pruner too strict?)"
    return f"{text}\n  more: {', '.join(where)}"


def _plots(study, folder: Path) -> list[Path]:
    """Optuna's plots: interactive HTML (plotly) and PNG (matplotlib) of each."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    n_complete = sum(t.state == TrialState.COMPLETE for t in done)
    kinds = [
        ("optimization_history", 1),
        ("intermediate_values", 1),
        ("parallel_coordinate", 1),
        ("param_importances", 2),
    ]
    out = []
    for name, need in kinds:
        if n_complete < need or (name == "param_importances" and len(study.best_params) < 1):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fig = getattr(vis, f"plot_{name}")(study)
                html = folder / f"{name}.html"
                fig.write_html(str(html), include_plotlyjs=True)  # offline: the JS is inside
                ax = getattr(vis_mpl, f"plot_{name}")(study)
                figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
                figure.set_size_inches(9, 5.5)
                png = folder / f"{name}.png"
                figure.savefig(png, dpi=110, bbox_inches="tight")
                plt.close(figure)
                out += [html, png]
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                (folder / f"{name}.txt").write_text(f"not plotted: {e}\n")
    return out


def register_best(sweep: Sweep, best, client, say) -> dict[str, Any]:
    """Evaluate the best trial on the test split, log its model into its MLflow run and put it
    through the champion gate under `<dataset>-<arch>`, like any trained model."""
    from assay import artifacts, evaluation, registry, training

    cfg = trial_config(sweep, yaml.safe_load(best.user_attrs["params_yaml"]) or {}, 1)
    out = sweep.out / "trials" / f"trial-{best.number}"
    model_uri = training.log_trained_model(cfg, sweep.root, out)
    scores = evaluation.evaluate(cfg, sweep.root, out=out).metrics
    info = artifacts.read_run_info(out, cfg.train.key, artifacts.commands(cfg, sweep.root))
    metric, mode = info["primary_metric"]
    decision = registry.gate(
        cfg,
        info["mlflow_tracking_uri"],
        cfg.train.key,
        model_uri,
        metric,
        mode,
        float(scores[metric]),
    )
    verdict = "promoted to champion" if decision.promoted else "kept as candidate"
    say(
        f"best trial {best.number} registered as {decision.name} v{decision.version}: "
        f"{verdict}: {decision.reason}"
    )
    return {**decision.__dict__, "test": scores}


# ------------------------------------------------------------------------------------ status
def status(study_name: str, storage: str) -> list[dict[str, Any]]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = open_storage(storage)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    if study_name not in names:
        raise SweepError(
            f"no study {study_name!r} in {storage}; studies there: {', '.join(names) or 'none'}"
        )
    return trials_table(optuna.load_study(study_name=study_name, storage=st))
