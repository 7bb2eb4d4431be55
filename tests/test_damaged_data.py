"""Damaged prepared data through the CLI: `assay train` and `assay evaluate` name the file and the
command that rebuilds it, exit 2 with no traceback, and leave nothing behind (no output folder,
no MLflow run, nothing overwritten)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from assay.cli import app
from assay.training import train
from tests.conftest import tiny_config

TINY = ["--dataset", "digits", "--set", "train.max_epochs=1", "--set", "train.batch_size=64"]


def _cut(path) -> None:
    """The file cut in half, as an interrupted copy or a full disk leaves it."""
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _fewer_rows(path) -> None:
    with np.load(path) as d:
        arrays = {k: d[k][:-5] for k in d.files}
    np.savez(path, **arrays)


def _meta(edit):
    def damage(path) -> None:
        path.write_text(edit(path.read_text()))

    return damage


CUT = "cut short or corrupt: numpy cannot read it (BadZipFile"
DAMAGE = {
    "train.npz cut": ("train.npz", _cut, CUT),
    "train.npz overwritten": (
        "train.npz",
        lambda path: path.write_bytes(b"not a numpy file"),
        "is not an .npz archive",
    ),
    "test.npz cut": ("test.npz", _cut, CUT),
    "meta.json not JSON": ("meta.json", _meta(lambda s: s[: len(s) // 2]), "not valid JSON"),
    "meta.json without counts": (
        "meta.json",
        _meta(lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "counts"})),
        "lacks 'counts'",
    ),
    "val.npz with fewer rows than meta counts": (
        "val.npz",
        _fewer_rows,
        "array 'x' has 265 rows; meta.json counts val: 270",
    ),
}


def _squash(text: str) -> str:
    # Rich wraps (and folds long paths) at the console's width: compare without whitespace
    return "".join(text.split())


def _assert_clean_error(result, filename: str, what: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = _squash(result.stderr)
    assert _squash(f"data/digits/{filename}: {what}") in message
    assert _squash("`dvc repro prepare@digits` (or `assay prepare digits`)") in message
    assert len(result.stderr.strip().splitlines()) <= 6


@pytest.mark.parametrize("case", DAMAGE)
@pytest.mark.bare
def test_train_on_damaged_data_names_the_file_and_leaves_nothing(project, monkeypatch, case):
    filename, damage, what = DAMAGE[case]
    damage(project / "data/digits" / filename)
    monkeypatch.chdir(project)
    result = CliRunner().invoke(app, ["train", *TINY, "--arch", "cnn_tiny"])
    _assert_clean_error(result, filename, what)
    assert not (project / "outputs").exists()
    assert not (project / "mlflow.db").exists()  # no run, not even a store
    assert not (project / "wandb").exists()


def test_evaluate_on_damaged_test_split_overwrites_nothing(project, monkeypatch):
    monkeypatch.chdir(project)
    result = train(tiny_config(project, arch="mlp_tiny", max_epochs=1), project)
    out = project / "outputs/digits-mlp_tiny"
    test_npz = project / "data/digits/test.npz"
    good = test_npz.read_bytes()
    evaluate = ["evaluate", *TINY, "--arch", "mlp_tiny"]

    _cut(test_npz)  # never evaluated: nothing appears
    _assert_clean_error(CliRunner().invoke(app, evaluate), "test.npz", CUT)
    assert not (out / "metrics.json").exists() and not (out / "eval").exists()
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "learning_curve.png", "model"]

    test_npz.write_bytes(good)  # evaluated once: the metrics and plots stay as they were
    assert CliRunner().invoke(app, evaluate).exit_code == 0
    before = {p: p.read_bytes() for p in [out / "metrics.json", *(out / "eval").iterdir()]}
    _cut(test_npz)
    _assert_clean_error(CliRunner().invoke(app, evaluate), "test.npz", CUT)
    assert {p: p.read_bytes() for p in [out / "metrics.json", *(out / "eval").iterdir()]} == before

    from tests.test_training import _client

    run = _client(project).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    history = _client(project).get_metric_history(result.run_id, "test/acc")
    assert len(history) == 1  # the one good evaluation, no second one
