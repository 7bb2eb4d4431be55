"""Scores per slice of the test split (fairlearn's MetricFrame): the table, the worst slice and
the widest gap, in `evaluate`'s outputs and MLflow, and `register.max_slice_gap` in the gate."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from assay.evaluation import evaluate
from assay.objectives import slices
from assay.registry import register, within_slice_gap
from assay.training import train
from tests.conftest import family_cfg, tiny_config


def test_slice_scores_name_the_worst_group_and_the_widest_gap():
    rng = np.random.default_rng(0)
    group = np.repeat(["a", "b", "c", "tiny"], [100, 200, 50, 5])
    y = rng.integers(0, 2, len(group))
    pred = y.copy()
    pred[:30] ^= 1  # a: 70% right
    pred[100:120] ^= 1  # b: 90%
    pred[-5:] ^= 1  # tiny: all wrong, but 5 examples: shown, not judged
    other = np.where(np.arange(len(group)) % 2 == 0, "even", "odd")
    found = slices.slice_scores("acc", "max", slices.accuracy, y, pred, {"g": group, "h": other})
    table = found.table.set_index(["feature", "group"])
    assert table.loc[("g", "a"), "value"] == pytest.approx(0.7)
    assert table.loc[("g", "b"), "value"] == pytest.approx(0.9)
    assert table.loc[("g", "c"), "value"] == 1.0
    assert table.loc[("g", "tiny"), "value"] == 0.0 and not table.loc[("g", "tiny"), "judged"]
    assert table.loc[("g", "b"), "count"] == 200
    assert table.loc[("h", "even"), "count"] + table.loc[("h", "odd"), "count"] == len(y)
    assert found.worst == ("g", "a", pytest.approx(0.7))
    assert found.gap == ("g", pytest.approx(0.3))  # 1.0 - 0.7: "tiny" is left out
    assert found.overall == pytest.approx(np.mean(y == pred))
    assert found.metrics() == {
        "test/slices/judged_acc": 5.0,  # a, b, c; even, odd
        "test/slices/worst_acc": pytest.approx(0.7),
        "test/slices/gap_acc": pytest.approx(0.3),
    }
    # lower is better: the worst group is the highest
    err = slices.slice_scores(
        "rmse", "min", slices.rmse, y.astype(float), pred.astype(float), {"g": group}
    )
    assert err.worst[:2] == ("g", "a")
    assert err.worst[2] == pytest.approx(np.sqrt(0.3))


@pytest.mark.parametrize(
    "gap,limit,promoted,fragment",
    [
        (0.05, 0.1, True, "first; slice gap 0.0500 <= 0.1"),
        (0.25, 0.1, False, "its acc differs by 0.2500 between slices of the test split"),
        (None, 0.1, True, "first (no slice scores: max_slice_gap unchecked)"),  # a forecaster
        ("none judged", 0.1, False, "no slice of the test split has enough examples"),
    ],
)
def test_the_slice_gap_rule(gap, limit, promoted, fragment):
    scores = {"test/acc": 0.9}
    if gap == "none judged":  # slices scored, each under MIN_COUNT examples
        scores["test/slices/judged_acc"] = 0.0
    elif gap is not None:
        scores |= {"test/slices/gap_acc": gap, "test/slices/worst_acc": 0.9 - gap}
        scores["test/slices/judged_acc"] = 3.0
    ok, reason = within_slice_gap(scores, "test/acc", limit, None, "first")
    assert ok is promoted and fragment in reason, reason
    assert ok or "register.max_slice_gap" in reason


def test_evaluate_scores_each_class_and_the_gate_can_refuse_a_wide_gap(project):
    """A digits classifier: accuracy per class in metrics.json, the CSV, the chart and MLflow's
    table; `register.max_slice_gap` below its gap keeps it a candidate."""
    cfg = tiny_config(project, wandb="disabled", max_epochs=3, lr=0.01)
    run_id = train(cfg, project).run_id
    metrics = evaluate(cfg, project).metrics
    out = project / "outputs" / cfg.train.key
    table = pd.read_csv(out / "eval/slices.csv")
    assert list(table["feature"].unique()) == ["class"] and len(table) == 10
    # each class's accuracy is its recall: the counts weigh them back to test/acc
    assert table["count"].sum() == json.loads((out / "metrics.json").read_text())["n_test"]
    overall = (table["value"] * table["count"]).sum() / table["count"].sum()
    assert overall == pytest.approx(metrics["test/acc"], abs=1e-6)
    judged = table[table["judged"]]
    assert metrics["test/slices/worst_acc"] == pytest.approx(judged["value"].min())
    gap = judged["value"].max() - judged["value"].min()
    assert metrics["test/slices/gap_acc"] == pytest.approx(gap) and gap > 0
    assert (out / "eval/slices.png").stat().st_size > 5000

    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    assert client.get_run(run_id).data.metrics["test/slices/gap_acc"] == pytest.approx(gap)
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"slices.csv", "slices.png", "slices.json"} <= names

    raw = cfg.model_dump()
    raw["register"]["max_slice_gap"] = round(gap / 2, 4)
    strict = type(cfg).model_validate(raw)
    decision = register(strict, project)
    assert not decision.promoted and "register.max_slice_gap" in decision.reason
    raw["register"]["max_slice_gap"] = 1.0
    decision = register(type(cfg).model_validate(raw), project)
    assert decision.promoted and "slice gap" in decision.reason, decision.reason


@pytest.mark.slow
def test_movielens_slices_by_user_group_and_popularity_are_in_mlflow(fproject):
    """The registered recommender's run holds RMSE per user gender, age band, occupation and
    film popularity band (ml-100k.user from the pinned wheel), as a table MLflow's UI shows."""
    cfg = family_cfg(fproject, "movielens", "matrix_factorization_tiny", max_epochs=2)
    train(cfg, fproject)
    metrics = evaluate(cfg, fproject).metrics
    decision = register(cfg, fproject)
    uri = f"sqlite:///{fproject / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version(decision.name, decision.version)
    mlflow.set_tracking_uri(uri)
    table = pd.DataFrame(
        **{
            k: v
            for k, v in json.loads(
                open(
                    mlflow.artifacts.download_artifacts(
                        run_id=version.run_id, artifact_path="slices.json"
                    )
                ).read()
            ).items()
            if k in ("columns", "data")
        }
    )
    features = dict(tuple(table.groupby("feature")))
    assert set(features) == {"gender", "age", "occupation", "film popularity"}
    assert set(features["gender"]["group"]) == {"F", "M"}
    assert set(features["age"]["group"]) <= {b[2] for b in slices.AGE_BANDS}
    assert len(features["occupation"]) == 21  # MovieLens-100K's occupations
    n_test = json.loads((fproject / "outputs" / cfg.train.key / "metrics.json").read_text())
    for name, part in features.items():  # each feature partitions the test ratings...
        assert part["count"].sum() == n_test["n_test"], name
        # ...so its groups' squared errors add up to the overall RMSE
        mse = (part["value"] ** 2 * part["count"]).sum() / part["count"].sum()
        assert np.sqrt(mse) == pytest.approx(metrics["test/rmse"], rel=1e-4), name
    judged = table[table["judged"]]
    assert metrics["test/slices/worst_rmse"] == pytest.approx(judged["value"].max())
    # rarely rated films are predicted worse than popular ones: the gap is real, and logged
    pop = features["film popularity"].set_index("group")["value"]
    assert pop["< 10 ratings"] > pop["200+"]
    assert client.get_run(version.run_id).data.metrics["test/slices/gap_rmse"] > 0
