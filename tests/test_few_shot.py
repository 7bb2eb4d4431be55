"""`train.labels_per_class`: a classifier trains on K labelled rows per class of the training
split, drawn with the run's seed, and its baseline is fitted on the same rows; val and test stay
whole, and a K no class can give is refused before any run opens."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from assay import baselines
from assay.data import datamodule
from assay.data.common import FewShotError, few_shot_rows
from assay.evaluation import evaluate
from assay.training import train
from tests.conftest import tiny_config


def test_rows_are_stratified_seeded_and_in_order():
    y = np.repeat(np.arange(3), [5, 8, 13])
    rows = few_shot_rows(y, 4, seed=0, where="x")
    assert np.bincount(y[rows]).tolist() == [4, 4, 4]
    assert (np.diff(rows) > 0).all()
    assert (few_shot_rows(y, 4, seed=0, where="x") == rows).all()  # the seed decides
    assert not (few_shot_rows(y, 4, seed=1, where="x") == rows).all()
    with pytest.raises(FewShotError, match=r"is 6, but in x class 0 has 5 .*at most 5"):
        few_shot_rows(y, 6, seed=0, where="x")


def test_only_the_training_split_shrinks(digits_data):
    root = digits_data.parent
    full = datamodule("digits", root)
    few = datamodule("digits", root, seed=3, labels_per_class=7)
    x, y = few.load_split("train")
    assert len(y) == 70 and np.bincount(y.numpy()).tolist() == [7] * 10
    assert x.shape[1:] == full.load_split("train")[0].shape[1:]
    for split in ("val", "test"):
        assert len(few.load_split(split)[1]) == len(full.load_split(split)[1])
    assert len(full.load_split("train")[1]) > 1000  # the cache keeps the two apart
    with pytest.raises(FewShotError, match=r"train.labels_per_class is 1000, but in .*train.npz"):
        datamodule("digits", root, labels_per_class=1000).verify()


def test_a_few_shot_run_and_its_baseline_see_the_same_rows(project):
    cfg = tiny_config(project, wandb="disabled", labels_per_class=5, max_epochs=3, seed=7)
    assert cfg.train.key == "digits-cnn_tiny-k5"  # never the full run's outputs or model
    result = train(cfg, project)
    scores = evaluate(cfg, project).metrics
    # the baseline evaluate logged is logistic regression fitted on the run's own 50 rows
    few = datamodule("digits", project, seed=7, labels_per_class=5)
    assert len(few.load_split("train")[1]) == 50
    same = baselines.fit("classification", None, few, refit=False).metrics["test/acc"]
    assert scores["test/baseline/acc"] == pytest.approx(same, abs=1e-9)
    full = baselines.fit("classification", None, datamodule("digits", project), refit=False)
    assert full.metrics["test/acc"] > same + 0.05  # ~1,300 rows against 50
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.data.params["train.labels_per_class"] == "5"
    stamp = json.loads((project / "outputs/digits-cnn_tiny-k5/eval/run.json").read_text())
    assert stamp["baseline"].startswith("logistic regression on pixels")
    assert not (project / "outputs/digits-cnn_tiny").exists()


@pytest.mark.parametrize(
    "arch,extra,fragment",
    [
        ("autoencoder_tiny", {}, "autoencoder_tiny on digits trains reconstruction"),
        ("cnn_tiny", {"refit": True}, "with train.refit: the refit would train on every label"),
        ("cnn_tiny", {"labels_per_class": 500}, "at most"),
    ],
)
def test_bad_few_shot_runs_are_refused_before_a_run_opens(project, arch, extra, fragment):
    cfg = tiny_config(project, arch=arch, wandb="disabled", **{"labels_per_class": 5, **extra})
    with pytest.raises(ValueError, match=fragment):
        train(cfg, project)
    assert not (project / "outputs").exists()
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
