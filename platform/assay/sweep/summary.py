"""A sweep's results: the trials table, Optuna's plots, best_params.yaml and metrics.json, the
parent MLflow run's summary, the best trial's model through the champion gate."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import TrialState

from assay import artifacts, evaluation, registry, tracking, training
from assay.paths import atomic_dir, atomic_write_bytes, atomic_write_json, csv_bytes
from assay.sweep.load import Sweep, safe_url, trial_config
from assay.sweep.study import error_line, link_runs, study_state, trials_table


def summarise(
    sweep: Sweep, study, client, parent_id: str, seconds: float, say, force: bool = False
) -> SweepResult:
    """The study's results, plots and files; the best trial registered (`force`: through the
    champion gate even if the champion was scored on other data)."""
    counts = study_state(study)
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
        files += [str(sweep.out / "plots" / p.name) for p in study_plots(study, folder)]
        for p in sorted(folder.iterdir()):
            client.log_artifact(parent_id, str(p))  # top level: what MLflow's Compare shows
    atomic_write_bytes(sweep.out / "trials.csv", csv_bytes(rows) if rows else b"")
    client.log_artifact(parent_id, str(sweep.out / "trials.csv"))
    for k, v in metrics.items():
        if isinstance(v, int | float):
            client.log_metric(parent_id, k, float(v))
    for k, v in best_params.items():
        client.set_tag(parent_id, f"best.{k}", str(v))
    ui = sweep.base.tracking.ui_url(sweep.root)
    try:
        link_runs(study, ui, client.get_run(parent_id).info.experiment_id, parent_id)
    except Exception as e:  # a convenience: never worth failing a finished sweep for
        say(f"could not link the trials to their MLflow runs in optuna-dashboard: {e}")
    if best is None:  # no best: no DVC outputs claim one, not even an earlier run's
        for name in ("best_params.yaml", "metrics.json"):
            (sweep.out / name).unlink(missing_ok=True)
        error = no_trial_complete(sweep, study, counts)
        args = (sweep.study, sweep.storage, parent_id, counts, None, None, {}, seconds, epochs)
        return SweepResult(*args, files=files, error=error)
    registration = None
    if best is not None:
        client.set_tag(parent_id, "best.mlflow_run_id", best.user_attrs.get("mlflow_run_id", ""))
        if sweep.cfg.register_best:
            registration = register_best(sweep, best, client, say, force)
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


def no_trial_complete(sweep: Sweep, study, counts: dict[str, int]) -> str:
    """Why a sweep has no best, and where to read more: the first failed trial's error."""
    text = f"no trial completed ({counts['fail']} failed, {counts['pruned']} pruned)"
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    # one the driver's stop interrupted (no error of its own) only if no trial has an error
    failed = [t for t in failed if "error" in t.user_attrs] or failed
    storage = f" --storage {safe_url(sweep.storage)}" if sweep.cfg.storage else ""
    where = [f"`assay sweep status {sweep.study}{storage}`", str(sweep.out / "trials.csv")]
    if failed:
        first = failed[0]
        error = first.user_attrs.get("error") or "the sweep driver stopped during it"
        text += f"; trial {first.number} failed: {error_line(error)}"
        if first.user_attrs.get("mlflow_run_id"):
            where.append(f"MLflow run {first.user_attrs['mlflow_run_id']} (error.txt)")
    elif counts["pruned"]:
        text += "; the pruner stopped every trial (is sweep.pruner too strict?)"
    return f"{text}\n  more: {', '.join(where)}"


def study_plots(study, folder: Path) -> list[Path]:
    """Optuna's plots: interactive HTML (plotly) and PNG (matplotlib) of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

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


def register_best(sweep: Sweep, best, client, say, force: bool = False) -> dict[str, Any]:
    """Evaluate the best trial on the test split, log its model into its MLflow run and put it
    through the champion gate under `<dataset>-<arch>`, like any trained model."""
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
        force=force,
        scores=scores,
    )
    verdict = "promoted to champion" if decision.promoted else "kept as candidate"
    say(
        f"best trial {best.number} registered as {decision.name} v{decision.version}: "
        f"{verdict}: {decision.reason}"
    )
    return {**decision.__dict__, "test": scores}


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
    # the driver's own seconds per trial it ran (telling its result, then asking, sampling,
    # checking and dispatching the next): what the study's size must not make grow
    # (bench/sweep_driver.py)
    driver_seconds: dict[int, float] = field(default_factory=dict)
