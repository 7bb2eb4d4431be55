"""Every artifact a stage writes names the MLflow run it belongs to, and every stage that reads one
checks it. A run's folder `outputs/<key>/` holds:

  model/run.json       the run's ids (MLflow, W&B), its key and objective       <- train
  model/*.ckpt         each Lightning checkpoint carries `assay.mlflow_run_id`  <- train
  learning_curve.png   a PNG text chunk `assay.mlflow_run_id`                   <- train
  metrics.json         `mlflow_run_id`: the run whose model was scored           <- evaluate
  eval/run.json        the same, for the plots and tables beside it (PNGs: stamped too)
  registration.json    `mlflow_run_id` of the registered version                <- register

A stage refuses a folder whose parts disagree (the model retrained after it was scored, a
checkpoint copied from another run, a run deleted from the store) and says which command makes
them agree again; nothing is silently scored or registered under another run's name.

Light to import (torch and PIL load inside the functions that need them): the CLI catches
`ArtifactMismatch` around every command. Checkpoints are stamped by `training.RunStamp`.
"""

from __future__ import annotations

from pathlib import Path

from assay import tracking
from assay.errors import UserError
from assay.paths import read_json

RUN_KEY = "assay.mlflow_run_id"  # in checkpoints (under "assay") and PNG text chunks


class ArtifactMismatch(UserError, ValueError):
    """Artifacts that do not belong to the same run; the message says what to run."""


def commands(cfg, root: Path) -> dict[str, str]:
    """The commands that (re)make each output of `cfg`'s run: `--run KEY` for a run of
    params.yaml (also a DVC stage), `-e KEY` for an experiment file, else the data and arch."""
    t = cfg.train
    if t.key in cfg.runs:
        sel = f"--run {t.key}"
    elif (root / "experiments" / f"{t.key}.yaml").exists():
        sel = f"-e {t.key}"
    else:
        sel = f"--dataset {t.dataset} --arch {t.arch}"
    dvc = t.key in cfg.runs  # a stage of the default pipeline
    return {
        stage: f"`assay {stage} {sel}`" + (f" (or `dvc repro {stage}@{t.key}`)" if dvc else "")
        for stage in ("train", "evaluate")
    }


def checkpoint_run(path: Path) -> str | None:
    """The run id a checkpoint was stamped with (None: not stamped). Memory-mapped: only the small
    `assay` entry is read, not the weights."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return (state.get("assay") or {}).get("mlflow_run_id")


def stamp_png(path: Path, run_id: str) -> Path:
    """Add the run's id to a PNG as a text chunk (`assay.mlflow_run_id`), keeping the image."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(path) as img:
        img.load()
        info = PngInfo()
        for k, v in getattr(img, "text", {}).items():
            if k != RUN_KEY:
                info.add_text(k, v)
        info.add_text(RUN_KEY, run_id)
        img.save(path, pnginfo=info)
    return path


def png_run(path: Path) -> str | None:
    from PIL import Image

    with Image.open(path) as img:
        return getattr(img, "text", {}).get(RUN_KEY)


def read_run_info(out: Path, key: str, how: dict[str, str]) -> dict:
    """`out/model/run.json`, checked: it is the run of `key`, and its checkpoint says so too."""
    info = read_json(out / "model" / "run.json", f"train it first: {how['train']}")
    if info.get("key") != key:
        raise ArtifactMismatch(
            f"{out / 'model' / 'run.json'} is run {info.get('mlflow_run_id')} of "
            f"{info.get('key')!r}, not of {key!r}: the folder was copied or renamed; train "
            f"{key!r} into it ({how['train']})"
        )
    checkpoint = out / "model" / info.get("checkpoint", "best.ckpt")
    if not checkpoint.exists():
        raise ArtifactMismatch(
            f"{checkpoint} is missing, though {out / 'model' / 'run.json'} names it: "
            f"retrain with {how['train']}"
        )
    stamped = checkpoint_run(checkpoint)
    if stamped != info["mlflow_run_id"]:
        made = f"run {stamped}" if stamped else "no run (an older Assay, or another tool)"
        raise ArtifactMismatch(
            f"{checkpoint} was written by {made}, but run.json names run "
            f"{info['mlflow_run_id']}: the folder holds parts of different runs; retrain with "
            f"{how['train']}"
        )
    return info


def check_run_finished(client, info: dict, out: Path, how: dict[str, str]) -> None:
    """The MLflow run that trained `out` exists in the store and ended FINISHED."""
    run_id = info["mlflow_run_id"]
    try:
        run = client.get_run(run_id).info
    except tracking.TrackingError:
        raise ArtifactMismatch(
            f"{out / 'model'} was trained by MLflow run {run_id}, which is not in the store "
            f"{info.get('mlflow_tracking_uri')} (another store?): retrain with {how['train']}"
        ) from None
    if run.lifecycle_stage == "deleted":
        raise ArtifactMismatch(
            f"{out / 'model'} was trained by MLflow run {run_id}, which was deleted: restore "
            f"it (`mlflow runs restore --run-id {run_id}`) or retrain with {how['train']}"
        )
    if run.status != "FINISHED":
        raise ArtifactMismatch(
            f"{out / 'model'} was trained by MLflow run {run_id}, which is {run.status}, not "
            f"FINISHED: its outputs are not whole; retrain with {how['train']}"
        )


def read_scores(out: Path, info: dict, how: dict[str, str]) -> dict:
    """`out/metrics.json`, checked: it scores the model now in `out/model` (same run)."""
    run_id = info["mlflow_run_id"]
    scores = read_json(out / "metrics.json", f"evaluate it first: {how['evaluate']}")
    scored = scores.get("mlflow_run_id")
    if scored != run_id:
        what = f"run {scored}" if scored else "a run it does not name (an older Assay)"
        raise ArtifactMismatch(
            f"{out / 'metrics.json'} scores {what}, but the model in {out / 'model'} is run "
            f"{run_id} (trained after the last evaluation): score it first with "
            f"{how['evaluate']}, then register"
        )
    return scores
