"""Each objective's classical baseline (`assay.baselines`): fitted on the same
prepared splits as the model, tuned on val, scored on test, logged beside the model's metrics
by `evaluate` and kept per data, objective and baseline code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from assay import baselines
from assay.data import datamodule
from assay.evaluation import evaluate
from assay.training import train
from tests.conftest import tiny_config


def test_evaluate_scores_the_baseline_beside_the_model_and_keeps_it(project, monkeypatch):
    cfg = tiny_config(project)
    result = train(cfg, project)
    scores = evaluate(cfg, project).metrics
    # logistic regression on the digits' pixels: far better than chance, on the same test split
    assert 0.8 < scores["test/baseline/acc"] <= 1.0
    assert {"test/baseline/f1_macro", "test/lift"} <= set(scores)
    assert scores["test/lift"] == pytest.approx(scores["test/acc"] - scores["test/baseline/acc"])
    uri = f"sqlite:///{project / 'mlflow.db'}"
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.metrics["test/baseline/acc"] == pytest.approx(scores["test/baseline/acc"])
    assert run.data.tags["baseline"].startswith("logistic regression on pixels, C=")
    dvc_metrics = json.loads((project / "outputs/digits-cnn_tiny/metrics.json").read_text())
    assert dvc_metrics["test/lift"] == pytest.approx(scores["test/lift"])
    kept = list((project / ".assay/baselines").glob("digits-classification-*.json"))
    assert len(kept) == 1

    # fitted once per data: a second evaluation reads it back, and fits nothing
    def refit(*_):
        raise AssertionError("the baseline was fitted again")

    monkeypatch.setitem(baselines.BASELINES, "classification", refit)
    again = evaluate(cfg, project).metrics
    assert again["test/baseline/acc"] == scores["test/baseline/acc"]


@pytest.mark.parametrize(
    ("dataset", "objective", "check"),
    [
        ("rotten_tomatoes", "classification", lambda m, dm: m["test/acc"] > 0.7),
        ("shuttle", "anomaly", lambda m, dm: m["test/roc_auc"] > 0.9),
        ("movielens", "rating", lambda m, dm: m["test/rmse"] < _mean_rmse(dm)),
        ("elecdemand", "forecast", lambda m, dm: m["test/rmse"] < _naive_rmse(dm)),
    ],
)
def test_each_baseline_is_a_real_model_on_the_real_data(family_data, dataset, objective, check):
    """Better than the trivial answer (the mean rating; the same step a season ago), so the
    model beside it is compared with something that learned."""
    dm = datamodule(dataset, family_data.parent)
    base = baselines.fit(objective, None, dm, refit=False)
    assert base.name and all(np.isfinite(v) for v in base.metrics.values())
    assert check(base.metrics, dm), (base.name, base.metrics)


def _mean_rmse(dm) -> float:
    train, test = dm.arrays("train"), dm.arrays("test")
    return float(np.sqrt(np.mean((test["r"] - train["r"].mean()) ** 2)))


def _naive_rmse(dm) -> float:
    x, y = dm.tensors("test")
    return float(torch.sqrt(torch.mean((dm.seasonal_naive(x) - y) ** 2)))


def test_a_refit_models_baseline_is_refitted_on_train_and_val_too(digits_data):
    dm = datamodule("digits", digits_data.parent)
    plain, refit = (baselines.fit("classification", None, dm, refit=r) for r in (False, True))
    # the C that val chose, then a fit on train + val
    assert refit.name == f"{plain.name}; refitted on train + val, as the model"
    assert refit.metrics != plain.metrics  # more rows, another model


def test_pca_keeps_at_most_every_component_of_the_image(digits_data):
    dm = datamodule("digits", digits_data.parent)  # 8x8: 64 pixels
    wide = baselines.reconstruction(dm, False, components=100)
    assert wide.name == "PCA, 64 components" and wide.metrics["test/mse"] < 1e-10
    assert baselines.reconstruction(dm, False, components=8).metrics["test/mse"] > 1e-4
