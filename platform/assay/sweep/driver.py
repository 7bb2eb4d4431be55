"""The sweep's driver: it opens the study and the sweep's MLflow run, starts `parallel` Ray tasks
that each run Optuna's own `optimize` loop on the study (`worker`), prints a line per trial event,
and after a stop lets Optuna's heartbeat fail and retry the trials that were running."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import time
import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from assay import distributed, lifecycle, tracking, training
from assay.sweep.load import Sweep, SweepError, safe_url
from assay.sweep.study import build_sampler, error_line
from assay.sweep.summary import SweepResult, summarise
from assay.sweep.trial import build_pruner
from assay.sweep.worker import MAX_RETRY, MISSED_BEATS, counted, run_trial, storage_for


def settle(study, storage, say, wait: float) -> list[int]:
    """Trials left RUNNING by a driver that stopped: wait (up to `wait` seconds) until their
    heartbeats lapse and let Optuna fail them (`fail_stale_trials`): its callback queues each
    one's parameters again and ends its MLflow run KILLED (`worker.StaleTrial`). A trial that
    keeps beating belongs to a driver that still runs: refused. Returns the failed numbers."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    numbers = [t.number for t in running]
    say(f"trials {', '.join(map(str, numbers))} were running: waiting for their heartbeats")
    # One beat for each, now: Optuna never fails a trial that never beat (one killed in the
    # instant after its ask, or from a study of an Assay without heartbeats); from this beat
    # on, a dead one goes stale like any other, and a live one beats on.
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in running:
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.record_heartbeat(tid)
    deadline = time.time() + wait
    while True:
        optuna.storages.fail_stale_trials(study)
        alive = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if not alive:
            return numbers
        if time.time() > deadline:
            raise SweepError(
                f"trials {', '.join(map(str, alive))} of study {study.study_name!r} still beat: "
                "another `assay sweep` is running this study; wait for it to end, or stop it "
                "and --resume"
            )
        time.sleep(1)


def preflight(sweep: Sweep) -> None:
    """Check once, on the base config in this process, what every trial would otherwise fail on
    (the data prepared, a model for it, the GAN's judge registered, local GPUs): the same checks
    `assay train` makes before its run. A failure leaves no study, no MLflow run, no outputs."""
    training.preflight(sweep.base, sweep.root)


def run_sweep(
    sweep: Sweep,
    *,
    resume: bool = False,
    fresh: bool = False,
    console=None,
    force: bool = False,
) -> SweepResult:
    """Run (or, with `resume`, continue) the study until its budget is spent; then summarise,
    plot and register. Ctrl-C stops the running trials (their MLflow runs KILLED; `--resume`
    retries them). `fresh`: delete the study's earlier trials first (what `dvc repro` does: a new
    sweep each time; the earlier MLflow runs stay). `force`: the best trial goes through the
    champion gate even if the champion was scored on other data."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE's `group` (for conditional spaces) is marked experimental since Optuna 2.8
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg = sweep.cfg
    preflight(sweep)  # before the study, MLflow or Ray is touched
    started = time.perf_counter()
    storage = storage_for(sweep)
    study = open_study(sweep, storage, resume, fresh)
    # The store exists before any trial runs in parallel (a new SQLite store created by two
    # processes at once breaks its migration; see PITFALLS).
    uri = tracking.tracking_uri(sweep.base.tracking, sweep.root)
    client = tracking.ensure_store(uri)
    parent_id = parent_run(sweep, study, client, uri)
    say = console.print if console else (lambda *a, **k: None)
    if resume:
        retried = settle(study, storage, say, wait=(MISSED_BEATS + 2) * cfg.heartbeat)
        if retried:
            say(
                f"resumed: trials {', '.join(map(str, retried))} were running when the driver "
                "stopped; marked failed, their parameters queued again"
            )
    spec = {
        "study_id": storage.get_study_id_from_name(sweep.study),
        "parent_run_id": parent_id,
        "tags": tracking.provenance(sweep.root, sweep.base.train.dataset),
        "driver": (socket.gethostname(), os.getpid()),
        "deadline": time.time() + cfg.timeout if cfg.timeout else None,
    }
    log = Log(say, cfg.objective.metric, cfg.objective.direction)
    status = "FINISHED"
    try:
        run_workers(sweep, study, storage, spec, log)
    except BaseException as e:
        stopped_by = lifecycle.stop_reason(e)  # told to stop (a signal, Ctrl-C, Ray): KILLED
        status = "KILLED" if stopped_by else "FAILED"
        client.set_tag(parent_id, "error", (stopped_by or f"{type(e).__name__}: {e}")[:5000])
        stopped(study, uri, say)
        client.set_terminated(parent_id, status)
        raise
    try:
        result = summarise(
            sweep, study, client, parent_id, time.perf_counter() - started, say, force
        )
        result.driver_seconds = log.overhead
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


def open_study(sweep: Sweep, storage, resume: bool, fresh: bool):
    """The sweep's study: new, or (`resume`) the existing one; `fresh` deletes an earlier one.
    Running an existing study again without either is refused."""
    cfg = sweep.cfg
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    if fresh and resume:
        raise SweepError("--fresh starts the study over and --resume continues it: pick one")
    if fresh and sweep.study in names:
        optuna.delete_study(study_name=sweep.study, storage=storage)
        names.remove(sweep.study)
        shutil.rmtree(sweep.out / "trials", ignore_errors=True)
    n = (
        len(optuna.load_study(study_name=sweep.study, storage=storage).trials)
        if (sweep.study in names)
        else 0
    )
    if n and not resume:
        raise SweepError(
            f"study {sweep.study!r} already exists in {safe_url(sweep.storage)} ({n} trials): "
            "continue it with --resume, or name a new one (sweep.study, or --set sweep.study=NAME)"
        )
    if resume and sweep.study not in names:
        raise SweepError(
            f"no study {sweep.study!r} in {safe_url(sweep.storage)} to resume; "
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
    # the objective's name where optuna-dashboard and optuna.visualization show it ("Objective 0"
    # without it)
    study.set_metric_names([cfg.objective.metric])
    return study


def parent_run(sweep: Sweep, study, client, uri: str) -> str:
    """The sweep's MLflow run: made with the study (its id kept on the study), reopened on
    --resume."""
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is not None:
        client.update_run(parent_id, status="RUNNING")
        with contextlib.suppress(Exception):  # an earlier run that failed: not this one (yet)
            client.delete_tag(parent_id, "error")
        return parent_id
    exp_id = tracking.experiment_id(client, sweep.base.tracking.experiment, sweep.root, uri)
    parent = client.create_run(
        exp_id,
        run_name=f"sweep-{sweep.study}",
        tags={
            "optuna.study": sweep.study,
            "optuna.storage": safe_url(sweep.storage),
            "assay.sweep": str(sweep.path or ""),
            "assay.key": sweep.base.train.key,
            **tracking.git_info(sweep.root),
        },
    )
    study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
    study.set_user_attr("sweep", sweep.cfg.model_dump(mode="json"))
    study.set_user_attr("sweep_out", str(sweep.out))
    log_sweep_params(client, parent.info.run_id, sweep)
    return parent.info.run_id


def run_workers(sweep: Sweep, study, storage, spec: dict[str, Any], log: Log) -> None:
    """Keep `parallel` trials running, each a Ray task (`worker.run_trial`), until `trials` of
    them spent the budget or the deadline passed. The driver alone starts trials, so the budget
    is met exactly. A task that died leaves its trial RUNNING without a heartbeat: the next
    trial's `optimize` (or, at the end, `settle`) fails it and queues its parameters again."""
    distributed.before_ray(sweep.base)  # a cluster's token mode: read when Ray loads
    import ray  # ~2 s: only a sweep that runs pays it
    from ray.util.queue import Empty, Queue

    cfg = sweep.cfg
    uses_ray_train = sweep.base.train.workers > 0
    task = ray.remote(run_trial).options(
        # a trial on Ray Train only orchestrates: its workers hold the CPUs
        num_cpus=0 if uses_ray_train else cfg.cpus_per_trial,
        max_retries=0,
    )
    budget = cfg.trials if cfg.trials is not None else math.inf
    deadline = spec["deadline"] or math.inf
    # What a local Ray offers: CPUs for `parallel` trials at once (at least the machine's).
    per_trial = sweep.base.train.workers if uses_ray_train else 1
    offer = {"workers": cfg.parallel * per_trial}
    if not uses_ray_train:
        offer["cpus_per_worker"] = cfg.cpus_per_trial
    ray_cfg = sweep.base.model_copy(update={"train": sweep.base.train.model_copy(update=offer)})
    wait = (MISSED_BEATS + 2) * cfg.heartbeat
    # Counted once, then kept as trials end: rescanning the study after each trial would cost
    # the driver more per trial the longer the sweep runs.
    told = sum(counted(t) for t in study.get_trials(deepcopy=False))
    dispatched = len(study.get_trials(deepcopy=False))  # each trial's sampler seed offset
    died = 0  # tasks in a row that died before telling their trial
    pending: dict[Any, int] = {}
    # Trials that are plain Ray tasks need no dashboard; it costs the trials CPU.
    with distributed.ray_session(ray_cfg, dashboard=uses_ray_train):
        events = Queue(actor_options={"num_cpus": 0})  # the trials' events, for the log
        last, resumed = None, 0.0
        try:
            while True:
                while len(pending) < cfg.parallel and told + len(pending) < budget:
                    if time.time() >= deadline:
                        break
                    ref = task.remote(sweep, {**spec, "index": dispatched}, events)
                    pending[ref] = dispatched
                    dispatched += 1
                if last is not None:  # the driver's own time: a result's arrival to waiting
                    log.overhead[last] = time.perf_counter() - resumed
                    last = None
                if not pending:
                    # tasks that died leave RUNNING trials: fail and queue them, then go on
                    if not settle(study, storage, log.say, wait) or told >= budget:
                        return
                    continue
                ended, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                resumed = time.perf_counter()
                log.drain(events, Empty)
                for ref in ended:
                    del pending[ref]
                    try:
                        out = ray.get(ref)
                    except Exception as e:  # the task itself died (OOM, node lost, killed)
                        log.say(f"[red]a trial worker stopped[/]: {error_line(str(e))}")
                        died += 1
                        if died > MAX_RETRY * cfg.parallel:
                            raise SweepError(
                                f"{died} trial workers in a row died before their trial ended; "
                                "see the errors above (memory? a native crash?)"
                            ) from e
                        continue
                    died = 0
                    told += out["counted"]
                    last = out["number"]
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            log.drain(events, Empty)
            raise
        finally:
            log.drain(events, Empty)


def stopped(study, uri: str, say) -> None:
    """After Ctrl-C or a driver error: the trials that were running end KILLED in MLflow now.
    In the study they stay RUNNING until their heartbeats lapse; `--resume` then fails them
    and runs their parameters again."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    why = {"trial.state": "failed", "error": "the sweep driver stopped during this trial"}
    for t in running:
        if t.user_attrs.get("mlflow_run_id"):
            with contextlib.suppress(Exception):
                tracking.end_run(
                    uri,
                    t.user_attrs["mlflow_run_id"],
                    "KILLED",
                    why,
                )
    if running:
        say(
            f"stopped: trials {', '.join(str(t.number) for t in running)} were running; "
            "`assay sweep --resume` runs their parameters again"
        )


class Log:
    """The driver's line per trial event, from the trials' queue, and the driver's own seconds
    per trial (from its result arriving to waiting again), for SweepResult."""

    def __init__(self, say, metric: str, direction: str) -> None:
        self.say, self.metric, self.direction = say, metric, direction
        self.best: float | None = None
        self.overhead: dict[int, float] = {}
        self.lost = False  # the events' queue is gone

    def drain(self, events, empty) -> None:
        while events is not None and not self.lost:
            try:
                event = events.get_nowait()
            except empty:
                return
            except Exception as e:  # the queue's actor died: the lines go, the sweep goes on
                self.lost = True
                self.say(f"[yellow]trial events are lost from here on[/]: {error_line(str(e))}")
                return
            self.show(event)

    def show(self, e: dict[str, Any]) -> None:
        n, state = e["n"], e["state"]
        if state == "started":
            again = "" if e.get("retry_of") is None else f" (retrying trial {e['retry_of']})"
            self.say(f"trial {n} started{again}: {fmt_params(e['params'])}")
        elif state == "failed":
            self.say(f"[red]trial {n} failed[/]: {error_line(e.get('error'))}")
        elif state == "pruned":
            self.say(
                f"[yellow]trial {n} pruned at epoch {e['at']}[/] ({self.metric} "
                f"{fmt(e.get('value'))}, {e.get('seconds', 0):.0f} s)"
            )
        else:
            value = e["value"]
            better = self.best is None or (
                value > self.best if self.direction == "maximize" else value < self.best
            )
            self.best = value if better else self.best
            self.say(
                f"trial {n} complete: {self.metric} {fmt(value)} ({e['epochs']} epochs, "
                f"{e.get('seconds', 0):.0f} s){' [green]new best[/]' if better else ''}"
            )


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def fmt_params(params: dict[str, Any]) -> str:
    def short(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k.split('.')[-1]}={short(v)}" for k, v in params.items())


def log_sweep_params(client, run_id: str, sweep: Sweep) -> None:
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
