"""The sweep's driver: it owns the study, asks Optuna for trials, runs each as a Ray task
(`parallel` at a time), tells Optuna the outcome, and recovers trials a stopped driver left."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from assay import distributed, tracking, training
from assay.config import ConfigError
from assay.sweep.load import Sweep, SweepError, safe_url, trial_config
from assay.sweep.study import build_sampler, open_storage, suggest
from assay.sweep.summary import SweepResult, error_line, summarise
from assay.sweep.trial import TrialContext, build_pruner, run_trial


def finished(study) -> int:
    """Trials that count toward the budget: complete, pruned, or failed by an error (not those
    a killed driver left behind: they are retried)."""
    n = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            n += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("interrupted"):
            n += 1
    return n


def fail_interrupted(study, storage, client, metric: str) -> tuple[list[int], list[int]]:
    """Trials a stopped driver left RUNNING. One whose training finished anyway (its MLflow run
    FINISHED: a trial on another node outlived the driver) is adopted: told to Optuna as its run
    ended, complete or pruned. The others are FAILED, their MLflow runs KILLED, and their
    parameters queued again. Returns (failed, adopted) trial numbers."""
    study_id = storage.get_study_id_from_name(study.study_name)
    failed, adopted = [], []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        run = child_run(client, study, t)
        tags = run.data.tags if run else {}
        # Adopted only if its outputs were written whole (run.json last of them): Lightning's
        # MLflow logger marks the run FINISHED when the fit ends, before the outputs exist.
        out = trial_out(study, t)
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


def trial_out(study, t) -> Path | None:
    sweep = study.user_attrs.get("sweep_out")
    return Path(sweep) / "trials" / f"trial-{t.number}" if sweep else None


def child_run(client, study, t):
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


def preflight(sweep: Sweep) -> None:
    """Check once, on the base config in this process, what every trial would otherwise fail on
    (the data prepared, a model for it, the GAN's judge registered, local GPUs): the same checks
    `assay train` makes before its run. A failure leaves no study, no MLflow run, no outputs."""
    training.preflight(sweep.base, sweep.root)


def run_sweep(
    sweep: Sweep, *, resume: bool = False, fresh: bool = False, console=None
) -> SweepResult:
    """Run (or, with `resume`, continue) the study until its budget is spent; then summarise,
    plot and register. Ctrl-C stops the running trials (FAILED, KILLED in MLflow). `fresh`:
    delete the study's earlier trials first (what `dvc repro` does: a new sweep each time; the
    earlier MLflow runs stay)."""

    import ray  # ~2 s: only a sweep that runs pays it

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
    study_id = storage.get_study_id_from_name(sweep.study)
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
                "optuna.storage": safe_url(sweep.storage),
                "assay.sweep": str(sweep.path or ""),
                "assay.key": sweep.base.train.key,
                **tracking.git_info(sweep.root),
            },
        )
        parent_id = parent.info.run_id
        study.set_user_attr("mlflow_parent_run_id", parent_id)
        study.set_user_attr("sweep", cfg.model_dump(mode="json"))
        study.set_user_attr("sweep_out", str(sweep.out))
        log_sweep_params(client, parent_id, sweep)
    else:
        client.update_run(parent_id, status="RUNNING")
        with contextlib.suppress(Exception):  # an earlier run that failed: not this one (yet)
            client.delete_tag(parent_id, "error")
    say = console.print if console else (lambda *a, **k: None)
    if resume:
        retried, adopted = fail_interrupted(study, storage, client, cfg.objective.metric)
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
    # Counted once, then kept as trials end: rescanning the study after each trial would cost
    # the driver more per trial the longer the sweep runs.
    told = finished(study)
    # The driver's own seconds per trial (SweepResult): from the trial's result arriving to the
    # driver waiting again (telling it, asking and dispatching the next), Ray's wait excluded.
    spent: dict[int, float] = {}
    last, resumed = None, 0.0
    try:
        # Trials that are plain Ray tasks need no dashboard; it costs the trials CPU.
        with distributed.ray_session(ray_cfg, dashboard=uses_ray_train):
            while True:
                room = budget - told - len(pending)
                while len(pending) < cfg.parallel and room > 0 and time.time() < deadline:
                    trial = study.ask()
                    params = suggest(trial, cfg.space, base_raw)
                    ctx = TrialContext(
                        study=sweep.study,
                        storage=sweep.storage,
                        # its id in the storage, for the process that trains it (public API:
                        # the storage's own lookup, not the Trial's private field)
                        trial_id=storage.get_trial_id_from_study_id_trial_number(
                            study_id, trial.number
                        ),
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
                        study.tell(trial, state=TrialState.FAIL)
                        say(f"[red]trial {trial.number} failed[/]: {e}")
                        told, room = told + 1, room - 1
                        continue
                    trial.set_user_attr("params_yaml", yaml.safe_dump(params, sort_keys=False))
                    ref = task.remote(tcfg.model_dump(mode="json"), ctx.dump(), str(sweep.root))
                    pending[ref] = trial
                    say(f"trial {trial.number} started: {fmt_params(params)}")
                    room -= 1
                if last is not None:  # from its result's arrival to waiting again
                    spent[last] = time.perf_counter() - resumed
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                resumed = time.perf_counter()
                trial = pending.pop(done[0])
                try:
                    out = ray.get(done[0])
                except Exception as e:  # the task itself died (OOM, node lost, ...)
                    out = {"number": trial.number, "state": "failed", "error": str(e)}
                tell(study, trial, out, client, say, sweep)
                told, last = told + 1, trial.number
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        if status == "FAILED":
            client.set_tag(parent_id, "error", f"{type(e).__name__}: {e}"[:5000])
        for ref in pending:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if pending:  # Ctrl-C: failed now, and queued again for a --resume
            fail_interrupted(study, storage, client, cfg.objective.metric)
        client.set_terminated(parent_id, status)
        raise
    try:
        result = summarise(sweep, study, client, parent_id, time.perf_counter() - started, say)
        result.driver_seconds = spent
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


def tell(study, trial, out: dict, client, say, sweep: Sweep) -> None:
    n = trial.number
    run_id = out.get("run_id")
    if run_id:
        trial.set_user_attr("mlflow_run_id", run_id)
    if out["state"] == "failed":
        trial.set_user_attr("error", out.get("error", "")[-2000:])
        study.tell(trial, state=TrialState.FAIL)
        say(f"[red]trial {n} failed[/]: {error_line(out.get('error'))}")
        return
    value = out.get("value")
    epochs = out.get("epochs", 0)
    trial.set_user_attr("epochs", epochs)
    if out["state"] == "pruned":
        frozen = study.tell(trial, state=TrialState.PRUNED)
        at = frozen.user_attrs.get("pruned_at_epoch")
        say(
            f"[yellow]trial {n} pruned at epoch {at}[/] ({sweep.cfg.objective.metric} "
            f"{fmt(frozen.value)}, {out.get('seconds', 0):.0f} s)"
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
            f"trial {n} complete: {sweep.cfg.objective.metric} {fmt(value)} "
            f"({epochs} epochs, {out.get('seconds', 0):.0f} s){mark}"
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
