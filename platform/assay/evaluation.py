"""`assay evaluate`: a trained run scored on its test split by its objective's scorer.

The scorer (`Objective.score`, in `assay.objectives`) returns the test metrics and writes its
pictures and tables into a folder; `evaluate` adds both to the training run in MLflow and W&B,
then writes `outputs/<key>/metrics.json` and `outputs/<key>/eval/` (DVC metrics and plots), whole
or not at all.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from assay import artifacts, baselines, tracking
from assay.config import AssayConfig
from assay.data import datamodule
from assay.models import get_entry
from assay.paths import atomic_dir, atomic_write_json, find_root, output_dir
from assay.preparation import sha256_file


@dataclass
class EvalResult:
    key: str
    run_id: str
    metrics: dict[str, float]  # the objective's test metrics (test/acc, test/rmse, ...)


def evaluate(cfg: AssayConfig, root: Path | None = None, out: Path | None = None) -> EvalResult:
    """Score the trained run `cfg.train.key` on its test split. `out`: the trained run's folder
    (default outputs/<key>; a sweep's trial has its own). Refuses a folder whose run.json,
    checkpoint and MLflow run do not agree (`assay.artifacts`); what it writes names the run it
    scored."""
    t = cfg.train
    root = root or find_root()
    out = out or output_dir(t.key, root)
    how = artifacts.commands(cfg, root)
    info = artifacts.read_run_info(out, t.key, how)
    run_id = info["mlflow_run_id"]
    client = tracking.ensure_store(info["mlflow_tracking_uri"])
    artifacts.check_run_finished(client, info, out, how)
    if t.num_threads > 0:
        torch.set_num_threads(t.num_threads)
    entry = get_entry(info["arch"])
    checkpoint = out / "model" / info.get("checkpoint", "best.ckpt")  # refit.ckpt after a refit
    model = entry.module_cls.load_from_checkpoint(checkpoint, map_location="cpu")
    model.eval()
    # the seed and labels_per_class pick the training rows a few-shot baseline is fitted on
    dm = datamodule(
        t.dataset,
        root,
        batch_size=cfg.evaluate.batch_size,
        seed=t.seed,
        labels_per_class=t.labels_per_class,
    )
    dm.verify(("test",))  # before anything is written or logged
    with atomic_dir(out / "eval") as folder:
        metrics, n = model.objective.score(model, dm, folder, t.key, cfg, root)
        refit = checkpoint.name == "refit.ckpt"
        baseline, scores = baseline_metrics(model, dm, metrics, root, refit)
        metrics.update(scores)
        pngs = {p.stem: artifacts.stamp_png(p, run_id) for p in sorted(folder.glob("*.png"))}
        # the test split it scored: the champion gate compares only scores of the same split
        data_hash = sha256_file(dm.folder / "test.npz")
        scored = {"mlflow_run_id": run_id, "key": t.key, "checkpoint": checkpoint.name}
        stamp = {**scored, "data_hash": data_hash, "baseline": baseline}
        atomic_write_json(folder / "run.json", stamp)
        for name, value in metrics.items():
            client.log_metric(run_id, name, value)
        client.set_tag(run_id, tracking.SCORED_ON, data_hash)
        if baseline:
            client.set_tag(run_id, "baseline", baseline)  # what test/baseline/* are the scores of
        # at the top of the run's artifacts, as training's learning curve: MLflow's Compare view
        # shows only top-level files (the stamp, run.json, is for the DVC stages: not logged)
        for p in sorted(folder.iterdir()):
            if p.name != "run.json":
                client.log_artifact(run_id, str(p))
        if (folder / "slices.csv").is_file():  # also as a table MLflow's UI shows and compares
            client.log_table(run_id, pd.read_csv(folder / "slices.csv"), "slices.json")
        tracking.log_wandb_summary(
            cfg.tracking, root, info.get("wandb_run_id"), info["run_name"], metrics, pngs
        )
    # names the run it scored: `register` refuses it for any other run's model
    atomic_write_json(out / "metrics.json", {**metrics, "n_test": int(n), "mlflow_run_id": run_id})
    return EvalResult(t.key, run_id, metrics)


def baseline_metrics(
    model, dm, metrics: dict[str, float], root: Path, refit: bool
) -> tuple[str | None, dict[str, float]]:
    """The objective's classical baseline on the same splits (`assay.baselines`), as
    `test/baseline/<metric>`, and `test/lift`: how far the model's primary metric beats the
    baseline's (model - baseline where higher is better, baseline - model where lower is; < 0:
    the baseline wins). `refit`: the model trained on train + val, and so is the baseline.
    Fitted once per prepared data, objective, setting and baseline code, and kept in
    .assay/baselines/. A baseline that cannot be fitted (a split of one class) is named in a
    warning, and the model is scored without it."""
    import sklearn

    name, mode = model.objective.primary
    objective = model.objective.name
    files = [dm.folder / f"{s}.npz" for s in ("train", "val", "test")] + [dm.folder / "meta.json"]
    parts = [sha256_file(f) for f in [*files, Path(baselines.__file__)]]
    parts += [objective, baselines.setting(objective, model), f"refit={refit}", sklearn.__version__]
    if dm.labels_per_class is not None:  # fitted on those rows only, as the model was
        parts.append(f"labels_per_class={dm.labels_per_class} seed={dm.seed}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    cache = root / ".assay" / "baselines" / f"{dm.name}-{objective}-{key}.json"
    if cache.is_file():
        found = json.loads(cache.read_text())
    else:
        try:
            base = baselines.fit(objective, model, dm, refit)
        except ValueError as e:  # scikit-learn's word for data it cannot fit or score
            print(f"assay: no baseline for {dm.name} ({objective}): {e}", file=sys.stderr)
            return None, {}
        if base is None:
            return None, {}
        found = {"name": base.name, "metrics": base.metrics}
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, found)
    scores = {f"test/baseline/{k.removeprefix('test/')}": v for k, v in found["metrics"].items()}
    if name in found["metrics"] and name in metrics:
        lift = metrics[name] - found["metrics"][name]
        scores["test/lift"] = lift if mode == "max" else -lift
    return found["name"], scores
