"""A sweep's trial as a Ray task: one step of Optuna's own loop (`study.optimize`) on the shared
study; the driver keeps `parallel` of them running until the budget is spent.

Recovery is Optuna's own mechanism, not ours: the storage has a heartbeat, so every running trial
beats into it every `sweep.heartbeat` seconds. A trial whose process died (killed, out of memory,
its node or its driver gone) stops beating; the next `optimize` step of any worker (or a resumed
driver, `settle`) fails it once three beats are missed, and `RetryHeartbeatStaleTrialCallback`
queues its parameters again as a WAITING trial, which the next `ask` takes first. `on_stale` adds
what Optuna can't know: the dead trial's MLflow run is ended KILLED.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
import warnings
from typing import Any

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from assay import tracking
from assay.config import ConfigError
from assay.sweep.load import Sweep, trial_config
from assay.sweep.study import build_sampler, open_storage, suggest
from assay.sweep.trial import TrialContext, build_pruner, die_with_driver, run_options
from assay.training import train

# A trial is failed as stale after this many missed heartbeats (Optuna's grace period), and
# retried up to MAX_RETRY times.
MISSED_BEATS = 3
MAX_RETRY = 3


def counted(trial) -> bool:
    """Whether a finished trial spends the budget: complete, pruned, or failed by an error of
    its own (a trial whose process died is retried instead: its retry counts)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


class StaleTrial:
    """Optuna's heartbeat-stale callback, plus the MLflow side: queue the dead trial's parameters
    again (Optuna's RetryHeartbeatStaleTrialCallback) and end its MLflow run KILLED. Picklable:
    every process that opens the storage holds one."""

    def __init__(self, tracking_uri: str, max_retry: int = MAX_RETRY) -> None:
        self.tracking_uri = tracking_uri
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study, trial) -> None:
        with warnings.catch_warnings():  # experimental since Optuna 2.8, and still the way
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracking.end_run(
                self.tracking_uri,
                run_id,
                "KILLED",
                {"trial.state": "failed", "error": "the trial's process stopped (no heartbeat)"},
            )


def storage_for(sweep: Sweep):
    """The study's storage with Optuna's heartbeat on, as every process of the sweep opens it."""
    uri = tracking.tracking_uri(sweep.base.tracking, sweep.root)
    beat = sweep.cfg.heartbeat
    return open_storage(
        sweep.storage,
        heartbeat_interval=beat,
        grace_period=MISSED_BEATS * beat,
        on_stale=StaleTrial(uri),
    )


class Objective:
    """One trial, as Optuna's `optimize` calls it: sample, train with `assay.training.train`
    (the same code as `assay train`), return the objective; pruned -> TrialPruned; an error is
    noted on the trial (`error`) and raised, so Optuna marks it FAILED."""

    def __init__(self, sweep: Sweep, spec: dict[str, Any], storage, events) -> None:
        self.sweep, self.spec, self.storage, self.events = sweep, spec, storage, events
        self.base_raw = sweep.base.model_dump()
        self.number: int | None = None  # the trial it ran, and its id in the storage
        self.tid: int | None = None

    def __call__(self, trial) -> float:
        try:
            return self.run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as e:  # noted on the trial (a failure of its own); the others go on
            if isinstance(e, ConfigError):  # a combination the per-key check could not see
                error = str(e)
            else:
                error = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            trial.set_user_attr("error", error[-2000:])
            self.say(n=trial.number, state="failed", error=error[-4000:])
            raise

    def say(self, **event) -> None:
        """Tell the driver (its log line); best effort: a lost queue costs a line, not a trial."""
        if self.events is not None:
            try:
                self.events.put(event, timeout=10)
            except Exception:
                self.events = None

    def run(self, trial) -> float:
        sweep, spec = self.sweep, self.spec
        metric = sweep.cfg.objective.metric
        # its id in the storage, for the processes that train it (Ray Train's workers report
        # to it): the storage's own lookup, not the Trial's private field
        tid = self.storage.get_trial_id_from_study_id_trial_number(spec["study_id"], trial.number)
        self.number, self.tid = trial.number, tid
        retry_of = RetryHeartbeatStaleTrialCallback.retried_trial_number(
            self.storage.get_trial(tid)
        )
        if retry_of is not None:  # Optuna copies the dead trial's attributes: not its run
            trial.set_user_attr("mlflow_run_id", None)
        params = suggest(trial, sweep.cfg.space, self.base_raw)
        trial.set_user_attr("ray_node_id", _node_id())  # where it ran, on a cluster of several
        self.say(n=trial.number, state="started", params=params, retry_of=retry_of)
        cfg = trial_config(sweep, params, sweep.cfg.cpus_per_trial)
        trial.set_user_attr("params_yaml", yaml.safe_dump(params, sort_keys=False))
        ctx = TrialContext(
            study=sweep.study,
            storage=sweep.storage,
            trial_id=tid,
            number=trial.number,
            metric=metric,
            pruner=sweep.cfg.pruner.model_dump(),
            parent_run_id=spec["parent_run_id"],
            out_dir=str(sweep.out / "trials" / f"trial-{trial.number}"),
            params=params,
            tags=spec["tags"],
            started=time.time(),
            driver=spec["driver"],
        )
        # trial_config validated it; run_options' on_run notes the MLflow run id on the trial
        result = train(cfg, sweep.root, run_options(ctx))
        trial.set_user_attr("epochs", result.epochs)
        value = result.metrics.get(metric)
        done = {"n": trial.number, "epochs": result.epochs, "seconds": result.seconds}
        if result.outcome["trial.state"] == "pruned":
            at = int(result.outcome["trial.pruned_at_epoch"])
            self.say(**done, state="pruned", at=at, value=value)
            raise optuna.TrialPruned(f"pruned at epoch {at}")
        if value is None or not math.isfinite(value):
            raise ValueError(f"no finite {metric}: {value}")
        self.say(**done, state="complete", value=value)
        return value


def _node_id() -> str | None:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def run_trial(sweep: Sweep, spec: dict[str, Any], events) -> dict[str, Any]:
    """A Ray task: one step of Optuna's own loop, `study.optimize(n_trials=1)`, on the study:
    fail the trials that stopped beating (and queue them again), ask (a queued retry first),
    train with the heartbeat on, tell. `spec`: plain facts the driver computed once (the study's
    id, the parent MLflow run, provenance tags, the driver's pid) and `index`, the how-manieth
    trial the driver dispatches (each gets its own sampler seed). Returns the trial's number and
    whether it spends the budget (`counted`)."""
    die_with_driver(spec["driver"])
    # One line per trial comes from the driver; Lightning's banners from every trial would bury it.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*(LeafSpec|logging interval|litlogger).*")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # its own "Trial 3 failed" log: ours says it
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg = sweep.cfg
    storage = storage_for(sweep)
    study = optuna.load_study(
        study_name=sweep.study,
        storage=storage,
        # each dispatched trial its own stream of random numbers (one seed in every process
        # would sample the same points again)
        sampler=build_sampler(cfg.sampler, cfg.space, spec["index"], cfg.parallel),
        pruner=build_pruner(cfg.pruner.model_dump()),
    )
    objective = Objective(sweep, spec, storage, events)
    study.optimize(objective, n_trials=1, catch=(Exception,))  # an error fails the trial only
    if objective.number is None:  # never called: nothing asked
        return {"number": None, "counted": False}
    return {"number": objective.number, "counted": counted(storage.get_trial(objective.tid))}
