"""MLflow's model registry with a champion gate.

Each trained run becomes a new version of its key (`train.key`) with the alias `candidate`; the
alias `champion` moves to it only if its primary test metric beats the current champion's (the
first version needs no champion to beat), the metric `evaluate` logged for that same run, and,
with `register.require_lift` (the default), only if it also beats its classical baseline on the
same split (`evaluate`'s test/lift > 0): a deep model a linear one beats stays a candidate. Two
scores are compared only if both were taken on the same test split (the runs'
`eval.data_hash`): an accuracy on another split says nothing about which model is better, so
the gate keeps the champion and says so unless forced. The decision is printed and written to
`outputs/<key>/registration.json`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from assay import artifacts, tracking
from assay.config import AssayConfig
from assay.paths import atomic_write_json, find_root, output_dir


@dataclass
class Decision:
    name: str
    version: str
    metric: str
    value: float
    champion_before: str | None  # version, None when there was none
    champion_value: float | None
    promoted: bool
    reason: str


def better(value: float, than: float | None, mode: str) -> bool:
    if than is None or math.isnan(than):
        return True
    return value > than if mode == "max" else value < than


def register(cfg: AssayConfig, root: Path | None = None, force: bool = False) -> Decision:
    """Register the model in outputs/<key>/ with the score `evaluate` gave that same run, or
    refuse: a metrics.json of another run (the model retrained since) is never used. `force`:
    compare with a champion scored on other data all the same."""
    root = root or find_root()
    key = cfg.train.key
    out = output_dir(key, root)
    how = artifacts.commands(cfg, root)
    info = artifacts.read_run_info(out, key, how)
    scores = artifacts.read_scores(out, info, how)
    # The objective's metric, recorded at training time (lower RMSE, higher accuracy, ...).
    metric, mode = info["primary_metric"]
    if metric not in scores:
        raise KeyError(f"{out / 'metrics.json'} has no {metric!r}; it has {sorted(scores)}")
    value = float(scores[metric])
    _check_logged(info, metric, value, out, how)
    decision = gate(
        cfg,
        info["mlflow_tracking_uri"],
        key,
        info["model_uri"],
        metric,
        mode,
        value,
        force=force,
        scores=scores,
    )
    atomic_write_json(
        out / "registration.json", {**asdict(decision), "mlflow_run_id": info["mlflow_run_id"]}
    )
    return decision


def _check_logged(info: dict, metric: str, value: float, out: Path, how: dict) -> None:
    """The score on disk is the one the run holds in MLflow (evaluate logs both), and the model
    to register is the run's own logged model."""
    client = tracking.ensure_store(info["mlflow_tracking_uri"])
    run_id = info["mlflow_run_id"]
    artifacts.check_run_finished(client, info, out, how)
    logged = client.get_run(run_id).data.metrics.get(metric)
    if logged is None or not math.isclose(logged, value, rel_tol=1e-6, abs_tol=1e-9):
        raise artifacts.ArtifactMismatch(
            f"{out / 'metrics.json'} says {metric} {value:.6g} for run {run_id}, but the run holds "
            f"{'none' if logged is None else f'{logged:.6g}'} in MLflow: score it again with "
            f"{how['evaluate']}"
        )
    source = tracking.logged_model_source(info.get("model_uri"))
    if source != run_id:
        raise artifacts.ArtifactMismatch(
            f"{out / 'model' / 'run.json'} names model {info.get('model_uri')}, which was logged "
            f"by run {source}, not by run {run_id}: retrain with {how['train']}"
        )


def gate(
    cfg: AssayConfig,
    uri: str,
    name: str,
    model_uri: str,
    metric: str,
    mode: str,
    value: float,
    *,
    scores: dict[str, float],
    force: bool = False,
) -> Decision:
    """Register `model_uri` as a new version of `name` and apply the champion gate: the champion
    alias moves only if `value` of `metric` beats the champion's (`mode`: max or min), and both
    were scored on the same data (unless `force`), and, under `register.require_lift`, it beats
    its baseline (`scores`: `evaluate`'s metrics, with test/lift and test/baseline/*)."""
    client = tracking.ensure_store(uri)
    aliases = cfg.register
    try:
        client.get_registered_model(name)
    except tracking.TrackingError:
        client.create_registered_model(name, description=f"Assay {name}; champion gate on {metric}")
    mv = tracking.register_version(model_uri, name)
    version = mv.version
    # shown in the registry's page as it is: 0.9941, not float32's 0.9940999746322632 (the exact
    # value is the run's metric, which the gate compares)
    client.set_model_version_tag(name, version, metric, f"{value:.6g}")
    if mv.run_id:  # what it was made from: data hash, commit, params digest, sweep, Ray, W&B
        tracking.tag_version(client, name, version, mv.run_id)
    client.set_registered_model_alias(name, aliases.candidate_alias, version)
    try:
        champ = client.get_model_version_by_alias(name, aliases.champion_alias)
    except tracking.TrackingError:
        champ = None
    champ_value = None
    if champ is None:
        promoted, reason = True, f"first version of {name}: champion by default"
    else:
        champ_run = client.get_run(champ.run_id).data
        champ_value = champ_run.metrics.get(metric, float("nan"))
        promoted, reason = _compare(value, champ_value, mode, metric, champ.version)
        our_tags = client.get_run(mv.run_id).data.tags if mv.run_id else {}
        ours = our_tags.get(tracking.SCORED_ON)
        theirs = champ_run.tags.get(tracking.SCORED_ON)
        if not (ours and theirs):  # scored before Assay recorded it, or outside `evaluate`
            which = f"champion v{champ.version}" if ours else f"v{version}"
            reason += f" ({which} has no {tracking.SCORED_ON}: same test split unchecked)"
        elif ours != theirs:
            if force:
                reason += f" (compared with --force although scored on other data: {theirs[:8]})"
            else:
                promoted, reason = (
                    False,
                    _other_data(metric, value, champ, champ_value, ours, theirs),
                )
        trained_for, champ_for = our_tags.get("objective"), champ_run.tags.get("objective")
        if trained_for and champ_for and trained_for != champ_for:  # even with --force
            promoted, reason = (
                False,
                (
                    f"not compared: v{version} was trained for {trained_for}, champion "
                    f"v{champ.version} for {champ_for} (tag objective): neither replaces the "
                    "other. The champion stays; give the run its own name (train.name)"
                ),
            )
    if promoted and aliases.require_lift:
        promoted, reason = beats_baseline(scores, metric, value, champ, reason)
    if promoted and aliases.max_slice_gap is not None:
        promoted, reason = within_slice_gap(scores, metric, aliases.max_slice_gap, champ, reason)
    if promoted:
        client.set_registered_model_alias(name, aliases.champion_alias, version)
    return Decision(
        name,
        str(version),
        metric,
        value,
        str(champ.version) if champ else None,
        champ_value,
        promoted,
        reason,
    )


def beats_baseline(scores: dict, metric: str, value: float, champ, reason: str):
    """(promoted, reason) once the baseline is asked: a lift that is not positive (or is NaN:
    the model's metric was) keeps it out. No lift at all: the objective has no baseline (the
    GAN), or `evaluate` could not fit it and said why; the reason says it went unchecked."""
    lift = scores.get("test/lift")
    if lift is None:
        return True, f"{reason} (no baseline score: not held to one)"
    if lift > 0:
        return True, f"{reason}; lift {lift:+.4f} over its baseline"
    base = scores.get(f"test/baseline/{metric.removeprefix('test/')}", float("nan"))
    stays = f"champion v{champ.version} stays" if champ else "there is no champion yet"
    return False, (
        f"{metric} {value:.4f} does not beat its classical baseline's {base:.4f} on the same "
        f"split (test/lift {lift:+.4f}): register.require_lift keeps it a candidate and {stays}. "
        "Set register.require_lift=false to promote models that lose to their baseline"
    )


def within_slice_gap(scores: dict, metric: str, limit: float, champ, reason: str):
    """(promoted, reason) under `register.max_slice_gap`: the widest gap of `metric` between
    slices of the test split (`assay.objectives.slices`) must not exceed `limit`. An objective
    scored without slices (forecast, anomaly) is not held to it, and the reason says so."""
    short = metric.removeprefix("test/")
    gap = scores.get(f"test/slices/gap_{short}")
    stays = f"champion v{champ.version} stays" if champ else "there is no champion yet"
    if gap is None and scores.get(f"test/slices/judged_{short}") is not None:
        return False, (
            f"no slice of the test split has enough examples to judge its {short} (see "
            f"slices.csv of the run): register.max_slice_gap cannot be checked; it stays a "
            f"candidate and {stays}"
        )
    if gap is None:
        return True, f"{reason} (no slice scores: max_slice_gap unchecked)"
    if gap <= limit:
        return True, f"{reason}; slice gap {gap:.4f} <= {limit:g}"
    worst = scores.get(f"test/slices/worst_{short}", float("nan"))
    return False, (
        f"its {short} differs by {gap:.4f} between slices of the test split (worst slice "
        f"{worst:.4f}; see slices.png of the run), more than register.max_slice_gap {limit:g}: "
        f"it stays a candidate and {stays}"
    )


def _compare(value: float, champ_value: float, mode: str, metric: str, champ: str):
    if better(value, champ_value, mode):
        return True, f"{metric} {value:.4f} beats champion v{champ}'s {champ_value:.4f}"
    return False, (
        f"{metric} {value:.4f} does not beat champion v{champ}'s {champ_value:.4f} "
        f"({'higher' if mode == 'max' else 'lower'} is better)"
    )


def _other_data(metric: str, value: float, champ, champ_value: float, ours: str, theirs: str):
    return (
        f"not compared: {metric} {value:.4f} was scored on data {ours[:8]}, champion "
        f"v{champ.version}'s {champ_value:.4f} on data {theirs[:8]} (tag {tracking.SCORED_ON}): "
        "scores on different test data do not rank two models. The champion stays; "
        "`assay register --force` compares them anyway"
    )
