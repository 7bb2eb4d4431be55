"""Every architecture family on its real data set, end to end: each `*_tiny` preset trains one
epoch on the real prepared data, is evaluated with its objective's metrics and artifacts, goes
through the champion gate with its own metric and direction, and predicts through `assay predict`.
Plus the data sets' own guarantees (time splits, training-only vocabulary, normal-only training)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from assay.cli import app
from assay.config import ConfigError, apply_overrides, load_config, validate
from assay.data import fetch, prepare
from assay.evaluation import evaluate
from assay.registry import register
from assay.training import train
from tests.conftest import REPO, mlflow_serving, post_json
from tests.conftest import family_cfg as _cfg


def _client(root):
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri)


# (dataset, arch, test metrics, primary metric, direction, eval artifacts)
CASES = [
    (
        "rotten_tomatoes",
        "rnn_tiny",
        {"test/acc", "test/f1", "test/roc_auc"},
        "test/acc",
        "max",
        {"confusion.png"},
    ),
    (
        "rotten_tomatoes",
        "lstm_tiny",
        {"test/acc", "test/f1", "test/roc_auc"},
        "test/acc",
        "max",
        {"confusion.png"},
    ),
    (
        "rotten_tomatoes",
        "gru_tiny",
        {"test/acc", "test/f1", "test/roc_auc"},
        "test/acc",
        "max",
        {"confusion.png"},
    ),
    (
        "rotten_tomatoes",
        "transformer_tiny",
        {"test/acc", "test/roc_auc"},
        "test/acc",
        "max",
        {"attention.png"},
    ),
    (
        "elecdemand",
        "lstm_tiny",
        {"test/mae", "test/rmse", "test/skill"},
        "test/rmse",
        "min",
        {"forecast.png"},
    ),
    (
        "elecdemand",
        "gru_tiny",
        {"test/mae", "test/rmse", "test/skill"},
        "test/rmse",
        "min",
        {"forecast.png"},
    ),
    (
        "elecdemand",
        "transformer_tiny",
        {"test/rmse", "test/naive_rmse"},
        "test/rmse",
        "min",
        {"forecast.png", "attention.png"},
    ),
    (
        "shuttle",
        "autoencoder_tiny",
        {"test/roc_auc", "test/pr_auc"},
        "test/roc_auc",
        "max",
        {"scores.png", "latent.png"},
    ),
    (
        "shuttle",
        "denoising_autoencoder_tiny",
        {"test/roc_auc", "test/pr_auc"},
        "test/roc_auc",
        "max",
        {"scores.png"},
    ),
    ("shuttle", "vae_tiny", {"test/roc_auc", "test/pr_auc"}, "test/roc_auc", "max", {"latent.png"}),
    (
        "digits",
        "autoencoder_tiny",
        {"test/mse"},
        "test/mse",
        "min",
        {"reconstructions.png", "latent.png"},
    ),
    ("digits", "vae_tiny", {"test/mse"}, "test/mse", "min", {"reconstructions.png", "latent.png"}),
    (
        "movielens",
        "matrix_factorization_tiny",
        {"test/rmse", "test/hr_at_10", "test/ndcg_at_10"},
        "test/rmse",
        "min",
        set(),
    ),
    (
        "movielens",
        "ncf_tiny",
        {"test/rmse", "test/hr_at_10", "test/ndcg_at_10"},
        "test/rmse",
        "min",
        set(),
    ),
]


@pytest.mark.parametrize(
    ("dataset", "arch", "metrics", "primary", "mode", "artifacts"),
    CASES,
    ids=[f"{d}-{a}" for d, a, *_ in CASES],
)
def test_family_trains_evaluates_and_registers(
    fproject, dataset, arch, metrics, primary, mode, artifacts
):
    cfg = _cfg(fproject, dataset, arch)
    result = train(cfg, fproject)
    scores = evaluate(cfg, fproject).metrics
    assert metrics <= set(scores) and all(np.isfinite(v) for v in scores.values())
    out = fproject / "outputs" / f"{dataset}-{arch}"
    assert artifacts <= {p.name for p in (out / "eval").iterdir()}
    assert json.loads((out / "metrics.json").read_text())[primary] == pytest.approx(scores[primary])

    client = _client(fproject)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.tags["objective"] == json.loads((out / "model/run.json").read_text())["objective"]
    )
    assert primary in run.data.metrics and "train/loss" in run.data.metrics
    # its classical baseline on the same split, and the lift over it (tests/test_baselines.py)
    base = primary.replace("test/", "test/baseline/")
    assert np.isfinite(scores[base]) and run.data.tags["baseline"]
    sign = 1 if mode == "max" else -1
    assert scores["test/lift"] == pytest.approx(sign * (scores[primary] - scores[base]))
    logged = {a.path for a in client.list_artifacts(result.run_id)}  # top level, for Compare
    assert set(artifacts) <= logged
    assert list((fproject / "wandb").glob(f"offline-run-*-{result.wandb_id}"))

    decision = register(cfg, fproject)
    assert decision.metric == primary and decision.promoted  # the first version is champion
    assert json.loads((out / "model/run.json").read_text())["primary_metric"] == [primary, mode]


def test_gate_for_a_lower_is_better_metric(fproject):
    """RMSE: a second, identical run is not better, and the reason says lower is better."""
    cfg = _cfg(fproject, "movielens", "matrix_factorization_tiny")
    for _ in range(2):
        train(cfg, fproject)
        evaluate(cfg, fproject)
        decision = register(cfg, fproject)
    assert decision.version == "2" and not decision.promoted
    assert "test/rmse" in decision.reason and "lower is better" in decision.reason


def _predict(root, monkeypatch, *args):
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["predict", *args])
    return result


def _same_as_mlflow(root, model_uri: str, path, raw, payload: dict) -> None:
    """`assay predict` on the file, MLflow's own loader on the same raw input and `mlflow models
    serve` on it as JSON (`payload`) answer alike: all run the logged model's contract
    (assay.tracking.contract)."""
    import mlflow

    from assay.predict import predict

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    ours = predict(model_uri, root / path, root).array
    theirs = mlflow.pyfunc.load_model(model_uri).predict(raw)
    theirs = theirs["reconstruction"] if isinstance(theirs, dict) else theirs
    np.testing.assert_array_equal(ours, theirs)
    log = root / f"serve-{model_uri.split('/')[-1].replace('@', '-')}.log"
    with mlflow_serving(root, model_uri, log) as port:
        status, body = post_json(port, payload)
    assert status == 200, body
    served = body["predictions"]
    served = served["reconstruction"] if isinstance(served, dict) else served
    # JSON carries each float32 as a decimal, and another process may sum in another order
    np.testing.assert_allclose(np.asarray(served, np.float64), ours, rtol=1e-5, atol=1e-6)


def test_predict_for_text_forecast_anomaly_and_ratings(fproject, monkeypatch):
    """`assay predict` for every family, and the same answers from `mlflow.pyfunc.load_model` on
    the same raw input (texts, windows and rows in their units, MovieLens ids, raw pixels)."""
    # Shuttle's as its experiments train: quantile scaling and an ensemble, both inside the
    # logged model, so MLflow's loader and server must answer as `assay predict` does
    quantile = {"models": {"autoencoder_tiny": {"scaling": "quantile", "ensemble": 2}}}
    for dataset, arch, settings in (
        ("rotten_tomatoes", "gru_tiny", {}),
        ("elecdemand", "lstm_tiny", {}),
        ("shuttle", "autoencoder_tiny", quantile),
        ("movielens", "ncf_tiny", {}),
        ("digits", "autoencoder_tiny", {}),
    ):
        cfg = _cfg(fproject, dataset, arch, **settings)
        train(cfg, fproject)
        evaluate(cfg, fproject)
        register(cfg, fproject)

    (fproject / "texts.txt").write_text("a wonderful, moving film\nboring and far too long\n")
    r = _predict(
        fproject,
        monkeypatch,
        "-m",
        "models:/rotten_tomatoes-gru_tiny@champion",
        "-i",
        "texts.txt",
        "--output",
        "t.csv",
    )
    assert r.exit_code == 0, r.output
    rows = (fproject / "t.csv").read_text().splitlines()
    assert rows[0] == "text,predicted,class,probability" and len(rows) == 3
    assert rows[1].split(",")[-2] in ("fresh", "rotten")
    texts = ["a wonderful, moving film", "boring and far too long"]
    _same_as_mlflow(
        fproject, "models:/rotten_tomatoes-gru_tiny@champion", "texts.txt", texts, {"inputs": texts}
    )

    test = np.load(fproject / "data/elecdemand/test.npz")
    np.save(fproject / "w.npy", test["x"][:5])
    r = _predict(
        fproject,
        monkeypatch,
        "-m",
        "models:/elecdemand-lstm_tiny@champion",
        "-i",
        "w.npy",
        "--output",
        "f.npy",
    )
    assert r.exit_code == 0, r.output
    forecast = np.load(fproject / "f.npy")
    assert forecast.shape == (5, 48)
    assert 1 < forecast.mean() < 10  # raw units (GW), not standardised
    windows = test["x"][:5]  # raw units: GW, degrees, 0/1 work days
    _same_as_mlflow(
        fproject,
        "models:/elecdemand-lstm_tiny@champion",
        "w.npy",
        windows,
        {"inputs": windows.tolist()},
    )

    rows = np.load(fproject / "data/shuttle/test.npz")
    np.save(fproject / "rows.npy", rows["x"][:200])
    r = _predict(
        fproject,
        monkeypatch,
        "-m",
        "models:/shuttle-autoencoder_tiny@champion",
        "-i",
        "rows.npy",
        "--output",
        "s.csv",
    )
    assert r.exit_code == 0, r.output
    assert (fproject / "s.csv").read_text().count("\n") == 201
    shuttle = "models:/shuttle-autoencoder_tiny@champion"
    _same_as_mlflow(
        fproject, shuttle, "rows.npy", rows["x"][:200], {"inputs": rows["x"][:200].tolist()}
    )
    nan_rows = rows["x"][:10].astype(np.float64)
    nan_rows[5, 2] = np.nan
    np.save(fproject / "nan.npy", nan_rows)
    r = _predict(fproject, monkeypatch, "-m", shuttle, "-i", "nan.npy")
    assert r.exit_code == 2 and "row 5 contains NaN or inf" in " ".join(r.stderr.split())

    (fproject / "pairs.csv").write_text("user,item\n196,242\n186,302\n")
    r = _predict(
        fproject,
        monkeypatch,
        "-m",
        "models:/movielens-ncf_tiny@champion",
        "-i",
        "pairs.csv",
        "--output",
        "r.csv",
    )
    assert r.exit_code == 0, r.output
    ratings = np.loadtxt(fproject / "r.csv", delimiter=",", skiprows=1)[:, 2]
    assert ((1 <= ratings) & (ratings <= 5)).all()
    import pandas as pd

    pairs = pd.DataFrame({"user": [196, 186], "item": [242, 302]})
    table = {"dataframe_split": {"columns": ["user", "item"], "data": [[196, 242], [186, 302]]}}
    _same_as_mlflow(fproject, "models:/movielens-ncf_tiny@champion", "pairs.csv", pairs, table)

    digits = np.load(fproject / "data/digits/test.npz")["x"][:20]  # raw pixels, 0..16
    np.save(fproject / "d.npy", digits)
    r = _predict(fproject, monkeypatch, "-m", "models:/digits-autoencoder_tiny@champion",
                 "-i", "d.npy", "--output", "d_out.csv")  # fmt: skip
    assert r.exit_code == 0, r.output
    mse = np.loadtxt(fproject / "d_out.csv", delimiter=",", skiprows=1)[:, 1]
    assert mse.shape == (20,) and (mse < 0.5).all()  # measured on [0, 1] pixels
    _same_as_mlflow(
        fproject,
        "models:/digits-autoencoder_tiny@champion",
        "d.npy",
        digits,
        {"inputs": digits.tolist()},  # JSON ints, 0..16
    )

    (fproject / "bad.csv").write_text("user,item\n99999,242\n")
    r = _predict(
        fproject, monkeypatch, "-m", "models:/movielens-ncf_tiny@champion", "-i", "bad.csv"
    )
    assert r.exit_code == 2 and "never saw" in r.stderr

    np.save(fproject / "short.npy", test["x"][:2, :10])
    r = _predict(
        fproject, monkeypatch, "-m", "models:/elecdemand-lstm_tiny@champion", "-i", "short.npy"
    )
    assert r.exit_code == 2 and "expected (N, 96, 7)" in r.stderr


def test_gan_is_judged_by_the_registered_classifier(fproject, monkeypatch):
    judge = _cfg(fproject, "digits", "cnn_tiny", max_epochs=5, lr=0.01)
    train(judge, fproject)
    evaluate(judge, fproject)
    register(judge, fproject)
    cfg = _cfg(
        fproject,
        "digits",
        "gan_tiny",
        max_epochs=2,
        batch_size=64,
        # conditional, as experiments/mnist-gan.yaml; the unconditional one: tests/test_models.py
        models={"gan_tiny": {"judge": "models:/{dataset}-cnn_tiny@champion", "conditional": True}},
    )
    result = train(cfg, fproject)
    client = _client(fproject)
    fd = client.get_metric_history(result.run_id, "val/fd")
    assert len(fd) == 2 and all(m.value > 0 for m in fd)  # one Fréchet distance per epoch
    assert len(client.get_metric_history(result.run_id, "val/class_match")) == 2
    samples = {a.path for a in client.list_artifacts(result.run_id, "samples")}
    assert samples == {"samples/samples_epoch000.png", "samples/samples_epoch001.png"}
    assert {"train/d_loss", "train/g_loss"} <= set(client.get_run(result.run_id).data.metrics)
    scores = evaluate(cfg, fproject).metrics
    assert scores["test/fd"] > 0 and 0 <= scores["test/recognised"] <= 1
    assert 0 <= scores["test/class_match"] <= 1
    assert register(cfg, fproject).metric == "test/fd"

    r = _predict(
        fproject,
        monkeypatch,
        "-m",
        "models:/digits-gan_tiny@champion",
        "--samples",
        "6",
        "--output",
        "g.npy",
    )
    assert r.exit_code == 0, r.output
    images = np.load(fproject / "g.npy")
    assert images.shape == (6, 1, 8, 8) and images.min() >= 0 and images.max() <= 1
    assert (fproject / "g.png").read_bytes()[:4] == b"\x89PNG"

    args = ("-m", "models:/digits-gan_tiny@champion", "--samples", "3", "--output", "c.csv")
    r = _predict(fproject, monkeypatch, *args, "--label", "7")
    assert r.exit_code == 0, r.output
    assert (fproject / "c.csv").read_text().splitlines()[1:] == ["0,7", "1,7", "2,7"]
    codes = np.random.default_rng(0).standard_normal((4, 18)).astype(np.float32)
    codes[:, -10:] = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
    np.save(fproject / "codes.npy", codes)
    gan = "models:/digits-gan_tiny@champion"
    _same_as_mlflow(fproject, gan, "codes.npy", codes, {"inputs": codes.tolist()})
    r = _predict(fproject, monkeypatch, *args, "--label", "10")
    assert r.exit_code == 2 and "allowed classes 0..9" in r.stderr
    # `assay explain` has no class or forecast of a GAN's to attribute: refused, nothing written
    r = CliRunner().invoke(app, ["explain", "-m", gan, "-i", "codes.npy", "-o", "why"])
    assert r.exit_code == 2 and "is a generation model" in r.stderr, r.output
    assert not (fproject / "why").exists()

    judge_uri = "models:/{dataset}-cnn_tiny@champion"
    plain = _cfg(
        fproject, "digits", "gan_tiny", batch_size=64, models={"gan_tiny": {"judge": judge_uri}}
    )
    uri = f"runs:/{train(plain, fproject).run_id}/model"
    r = _predict(fproject, monkeypatch, "-m", uri, "--samples", "4", "--output", "u.npy")
    assert r.exit_code == 0, r.output
    assert np.load(fproject / "u.npy").shape == (4, 1, 8, 8)
    r = _predict(fproject, monkeypatch, "-m", uri, "--label", "1")
    assert r.exit_code == 2 and "not conditional" in r.stderr


def test_refit_trains_a_fresh_model_on_train_and_val_and_it_is_the_runs_model(fproject):
    """`train.refit`: the fit picks the epoch count on val, then a fresh model trains that
    many epochs on train + val; it is what is logged, evaluated and registered."""
    cfg = _cfg(
        fproject, "movielens", "matrix_factorization_tiny", max_epochs=3, refit=True, lr=0.01
    )
    result = train(cfg, fproject)
    out = fproject / "outputs/movielens-matrix_factorization_tiny"
    info = json.loads((out / "model/run.json").read_text())
    history = np.genfromtxt(out / "history.csv", delimiter=",", names=True)
    best_epoch = int(history["epoch"][np.argmin(history["valrmse"])])
    assert info["checkpoint"] == "refit.ckpt" and result.checkpoint == out / "model/refit.ckpt"
    assert info["refit_epochs"] == best_epoch + 1 and info["epochs"] == 3
    assert (out / "model/best.ckpt").exists()  # the selection fit's, kept beside it

    from assay.models.recommender import MatrixFactorization

    refit = MatrixFactorization.load_from_checkpoint(out / "model/refit.ckpt")
    chosen = MatrixFactorization.load_from_checkpoint(out / "model/best.ckpt")
    d = {s: np.load(fproject / f"data/movielens/{s}.npz") for s in ("train", "val")}
    # the refit learned from val: its item counts (the popularity bias) include val's ratings
    both = np.bincount(np.r_[d["train"]["i"], d["val"]["i"]], minlength=1682).tolist()
    assert refit.task.item_counts == both != chosen.task.item_counts
    assert not torch.equal(refit.net.user.weight, chosen.net.user.weight)

    client = _client(fproject)
    run = client.get_run(result.run_id)
    assert run.data.tags["refit.epochs"] == str(best_epoch + 1)
    steps = client.get_metric_history(result.run_id, "refit/loss")
    assert [m.step for m in steps] == list(range(best_epoch + 1))
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.ckpt", "checkpoints/refit.ckpt"}

    # evaluate scores the refit model
    metrics = evaluate(cfg, fproject).metrics
    test = np.load(fproject / "data/movielens/test.npz")
    with torch.no_grad():
        pred = refit.net(torch.from_numpy(test["u"]), torch.from_numpy(test["i"])).clamp(1, 5)
    rmse = float(((pred - torch.from_numpy(test["r"])) ** 2).mean().sqrt())
    assert metrics["test/rmse"] == pytest.approx(rmse, rel=1e-4)


@pytest.mark.bare
def test_refit_where_it_has_no_meaning_fails_before_any_run(fproject, monkeypatch):
    cfg = _cfg(fproject, "digits", "gan_tiny", refit=True)
    with pytest.raises(ConfigError, match="train.refit: true: a GAN's validation split only"):
        train(cfg, fproject)
    assert not (fproject / "mlflow.db").exists()
    monkeypatch.chdir(fproject)
    r = CliRunner().invoke(
        app, ["train", "--dataset", "digits", "--arch", "mlp", "--refit", "-w", "2"]
    )
    assert r.exit_code == 2 and "train.refit: true with train.workers 2" in r.stderr
    assert "set train.workers=0 or train.refit=false" in r.stderr
    assert not (fproject / "outputs").exists() and not (fproject / "mlflow.db").exists()
    # a run that does not refit is not held back by one in params.yaml that does
    params = yaml.safe_load((fproject / "params.yaml").read_text())
    assert params["runs"]["movielens-matrix_factorization"]["refit"] is True
    cfg = load_config(overrides=["train.workers=2"], root=fproject)
    assert cfg.train.workers == 2


def test_refit_data_is_train_plus_val_and_anomalies_stay_out(family_data):
    from assay.data import datamodule

    root = family_data.parent
    for name in ("movielens", "elecdemand", "shuttle"):
        dm, refit = datamodule(name, root), datamodule(name, root, refit=True)
        dm.setup(), refit.setup()
        n_train, n_val = len(dm._data["train"]), len(dm._data["val"])
        rows = refit.train_dataloader().dataset
        if name == "shuttle":  # its training split is normal rows: so is what val adds
            normal_val = int((dm._data["val"].tensors[1] == 0).sum())
            assert 0 < normal_val < n_val and len(rows) == n_train + normal_val
            assert all(int(rows[k][1]) == 0 for k in range(n_train, len(rows), 97))
        else:
            assert len(rows) == n_train + n_val
        assert len(refit.val_dataloader().dataset) == n_val  # val itself is unchanged


@pytest.mark.bare
def test_gan_without_its_judge_fails_before_any_run(fproject):
    cfg = _cfg(fproject, "digits", "gan_tiny")
    with pytest.raises(
        FileNotFoundError,
        match=r"judge models:/digits-cnn@champion .*dvc repro register@digits-cnn",
    ):
        train(cfg, fproject)
    assert not (fproject / "mlflow.db").exists() or not _client(fproject).search_runs(
        [e.experiment_id for e in _client(fproject).search_experiments()]
    )


def test_an_architecture_on_the_wrong_kind_of_data_is_a_config_error(fproject, monkeypatch):
    monkeypatch.chdir(fproject)
    r = CliRunner().invoke(app, ["train", "--dataset", "digits", "--arch", "lstm"])
    assert r.exit_code == 2
    assert "train.arch: 'lstm' cannot train on 'digits' (image data)" in r.stderr
    assert "rotten_tomatoes" in r.stderr and "elecdemand" in r.stderr
    assert not (fproject / "outputs").exists()


# ------------------------------------------------------------------------------------ the data
def test_series_splits_are_by_time_and_targets_stay_inside(family_data):
    meta = json.loads((family_data / "elecdemand/meta.json").read_text())
    starts = {
        s: np.load(family_data / f"elecdemand/{s}.npz")["t"] for s in ("train", "val", "test")
    }
    rows = meta["split_rows"]
    assert starts["train"].max() < starts["val"].min() <= starts["val"].max() < starts["test"].min()
    for split, t in starts.items():
        lo, hi = rows[split]
        assert t.min() >= lo and t.max() + meta["horizon"] <= hi  # targets wholly inside
    d = np.load(family_data / "elecdemand/test.npz")
    assert d["x"].shape[1:] == (96, len(meta["features"])) and d["y"].shape[1] == 48
    assert meta["features"][-2:] == ["WorkDay_ahead", "Temperature_ahead"]
    # what is known of the day ahead: each row's <name>_ahead is <name> of the row a day later
    assert np.array_equal(d["x"][:, :48, 5], d["x"][:, 48:, 2])  # the calendar
    assert np.array_equal(d["x"][:, :48, 6], d["x"][:, 48:, 1])  # the temperature
    # the first target of a window is the step after its last input
    nxt = np.load(family_data / "elecdemand/test.npz")
    assert np.allclose(nxt["x"][1, -1, 0], nxt["y"][0, 0])


def test_text_vocabulary_comes_from_the_training_split_only(family_data, tmp_path):
    from tokenizers import Tokenizer

    from assay.preparation.text import read_corpus

    meta = json.loads((family_data / "rotten_tomatoes/meta.json").read_text())
    assert meta["counts"]["train"] + meta["counts"]["val"] + meta["counts"]["test"] == 12808
    tok = Tokenizer.from_file(str(family_data / "rotten_tomatoes/tokenizer.json"))
    assert tok.get_vocab_size() == meta["vocab_size"] <= 8000 and tok.token_to_id("[PAD]") == 0
    # Built from the training texts alone: every word-initial token is the start of a word of
    # the training split, so no word seen only in val/test can have leaked into the vocabulary.
    # (WordPiece's choices at the vocabulary cut-off are not deterministic, so a rebuilt
    # tokenizer is not compared token for token; the tokenizer file travels with the ids.)
    from assay.preparation.common import stratified_split

    cfg = load_config(params=REPO / "params.yaml", root=tmp_path).prepare
    texts, y = read_corpus(family_data / "raw/rotten_tomatoes/rotten_tomatoes_corpus_full.csv.bz2")
    train_idx, _, test_idx = stratified_split(y, cfg.val_fraction, cfg.test_fraction, cfg.seed)

    def words(idx):
        pre, norm = tok.pre_tokenizer, tok.normalizer
        return {w for i in idx for w, _ in pre.pre_tokenize_str(norm.normalize_str(texts[i]))}

    train_words = words(train_idx)
    prefixes = {w[:k] for w in train_words for k in range(1, len(w) + 1)}
    vocab = tok.get_vocab()
    starts = {t for t in vocab if len(t) > 1 and not t.startswith(("##", "["))}
    assert starts <= prefixes
    test_only = {w for w in words(test_idx) - train_words if len(w) > 4}
    assert test_only and not (test_only & starts - prefixes)


def test_ratings_split_by_time_per_user_and_negatives_are_unrated(family_data):
    d = {s: np.load(family_data / f"movielens/{s}.npz") for s in ("train", "val", "test")}
    meta = json.loads((family_data / "movielens/meta.json").read_text())
    assert sum(len(a["r"]) for a in d.values()) == 100_000
    assert meta["n_users"] == 943 and meta["n_items"] == 1682
    for a in d.values():  # every user is in every split
        assert len(np.unique(a["u"])) == 943
    rated = np.zeros((943, 1682), bool)
    for a in d.values():
        rated[a["u"], a["i"]] = True
    cand = d["test"]["rank_items"]
    assert cand.shape == (943, 100)
    assert rated[np.arange(943), cand[:, 0]].all()  # the positive was rated (in test)
    assert not rated[np.arange(943)[:, None], cand[:, 1:]].any()  # negatives never were
    # by time: no user has a training rating later than any of their test ratings
    last_train = np.zeros(943, np.int64)
    np.maximum.at(last_train, d["train"]["u"], d["train"]["t"])
    first_test = np.full(943, np.iinfo(np.int64).max)
    np.minimum.at(first_test, d["test"]["u"], d["test"]["t"])
    assert (last_train <= first_test).all()
    # the recommenders' popularity bias counts each film's ratings in the training split only
    from assay.data.ratings import RatingsDataModule

    dm = RatingsDataModule("movielens", family_data.parent)
    task = dm.task
    assert task.item_counts == np.bincount(d["train"]["i"], minlength=1682).tolist()
    # and rarely rated films are rated lower in test, which is what it is for
    counts = np.asarray(task.item_counts)[d["test"]["i"]]
    assert d["test"]["r"][counts < 20].mean() < d["test"]["r"][counts >= 100].mean() - 0.5
    # the films' attributes come from the wheel's ml-100k.item: Toy Story (MovieLens id 1)
    names = meta["item_attribute_names"]
    toy_story = meta["item_ids"].index(1)
    assert {names[k] for k in task.item_attributes[toy_story]} == {
        "genre Animation",
        "genre Children's",
        "genre Comedy",
        "released 1995-1996",
    }
    assert task.n_item_attributes == len(names) == 24 and len(task.item_attributes) == 1682
    # a training rating's position is k/n in its user's training history, by time; val and
    # test ratings come after all of them: position 1
    u, _, position, _ = (x.numpy() for x in dm.tensors("train"))
    first = np.flatnonzero(u == u[0])
    n = len(first)
    assert np.allclose(position[first], np.arange(1, n + 1) / n)  # the split is in time order
    assert (np.diff(d["train"]["t"][first]) >= 0).all()
    for split in ("val", "test"):
        assert (dm.tensors(split)[2] == 1).all()
    # a refit's positions run over train + val: each user's val ratings are their latest
    refit = RatingsDataModule("movielens", family_data.parent, refit=True)
    refit.setup()
    ru, _, rpos, _ = refit.train_dataloader().dataset.tensors
    n_train = len(u)
    assert len(ru) == n_train + len(d["val"]["u"])
    latest_train = np.zeros(943, np.float32)
    np.maximum.at(latest_train, ru[:n_train].numpy(), rpos[:n_train].numpy())
    assert (rpos[n_train:].numpy() > latest_train[ru[n_train:].numpy()]).all()
    assert np.isclose(rpos.max(), 1.0) and (latest_train < 1).all()


def test_ratings_random_split_keeps_each_users_fractions(family_data, tmp_path):
    cfg = validate(
        apply_overrides(
            load_config(params=REPO / "params.yaml", root=tmp_path).model_dump(),
            ["prepare.ratings.split=random"],
        )
    )
    shutil.copytree(family_data / "raw/movielens", tmp_path / "data/raw/movielens")
    prepare("movielens", cfg.prepare, tmp_path)
    rand = {s: np.load(tmp_path / f"data/movielens/{s}.npz") for s in ("train", "val", "test")}
    time = {s: np.load(family_data / f"movielens/{s}.npz") for s in ("train", "val", "test")}
    for s in rand:  # the same number of ratings per user and split, other ratings in them
        assert (np.bincount(rand[s]["u"]) == np.bincount(time[s]["u"])).all()

    def pairs(d):
        return set(zip(d["u"].tolist(), d["i"].tolist(), strict=True))

    assert len(pairs(rand["test"]) & pairs(time["test"])) < 0.5 * len(rand["test"]["u"])
    assert not pairs(rand["train"]) & pairs(rand["test"])
    # now some users rated a training film after a test one
    last_train = np.zeros(943, np.int64)
    np.maximum.at(last_train, rand["train"]["u"], rand["train"]["t"])
    first_test = np.full(943, np.iinfo(np.int64).max)
    np.minimum.at(first_test, rand["test"]["u"], rand["test"]["t"])
    assert (last_train > first_test).mean() > 0.5
    meta = json.loads((tmp_path / "data/movielens/meta.json").read_text())
    assert meta["split"] == "random"


def test_shuttle_trains_on_normal_rows_only(family_data):
    train = np.load(family_data / "shuttle/train.npz")
    test = np.load(family_data / "shuttle/test.npz")
    assert (train["y"] == 0).all()
    assert 0.05 < test["y"].mean() < 0.10  # ~7.2% anomalies kept in test


def test_fashion_mnist_from_the_debian_package_or_a_clear_message(tmp_path):
    cfg = load_config(params=REPO / "params.yaml", root=tmp_path)
    from pathlib import Path

    if Path(cfg.fetch.fashion_mnist_dir, "train-images-idx3-ubyte.gz").exists():
        fetch("fashion_mnist", cfg.fetch, tmp_path)
        prepare("fashion_mnist", cfg.prepare, tmp_path)
        meta = json.loads((tmp_path / "data/fashion_mnist/meta.json").read_text())
        assert meta["counts"]["test"] == 10_000 and sum(meta["counts"].values()) == 70_000
        assert meta["classes"][9] == "Ankle boot" and meta["shape"] == [1, 28, 28]
    else:
        with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
            fetch("fashion_mnist", cfg.fetch, tmp_path)
        assert not (tmp_path / "data/raw/fashion_mnist").exists()
    # either way, a missing folder is the clear message, and nothing is left behind
    missing = cfg.fetch.model_copy(update={"fashion_mnist_dir": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        fetch("fashion_mnist", missing, tmp_path / "other")
    assert not (tmp_path / "other/data/raw/fashion_mnist").exists()
