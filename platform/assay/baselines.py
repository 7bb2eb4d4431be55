"""Classical baselines, one per objective, on exactly the splits the model saw: fitted on train,
their one setting chosen on val, scored once on test, under the model's own metric names. For a
refit model (`train.refit`: trained on train + val), the baseline is refitted on train + val too,
with the setting val chose.

  classification  logistic regression: on the pixels (images), on TF-IDF of the token n-grams
                  (text, the same WordPiece tokens the models read)
  forecast        ridge regression over the same window (every feature, every step)
  anomaly         Isolation Forest, fitted on the same normal-only training rows
  rating          the biased baseline: global mean + user bias + item bias, regularised
  reconstruction  PCA with as many components as the autoencoder's code
  generation      none (a sample's quality has no classical counterpart here)

scikit-learn does the fitting. The biased rating baseline is a few lines of alternating least
squares: scikit-learn has none, and the libraries that do (Surprise) do not build here. Only
`evaluate` runs these: training never imports this module, so an edit here re-scores, not
retrains.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Baseline:
    name: str  # what it is, with the setting val chose
    metrics: dict[str, float]  # test metrics, under the model's names ("test/acc")


def fit(objective: str, model, dm, refit: bool) -> Baseline | None:
    """The objective's baseline on `dm`'s splits; None for an objective that has none."""
    if objective not in BASELINES:
        return None
    extra = [model.config.latent_dim] if objective == "reconstruction" else []
    base = BASELINES[objective](dm, refit, *extra)
    if refit:
        base.name += "; refitted on train + val, as the model"
    return base


def setting(objective: str, model) -> str:
    """What of the model a baseline depends on (PCA: the code's size), for the key it is kept
    under."""
    return f"components={model.config.latent_dim}" if objective == "reconstruction" else ""


def tuned(
    settings: Iterable[Any], fit: Callable[[Any], Any], val_score: Callable[[Any], float], mode: str
) -> tuple[Any, Any]:
    """The setting (and its fitted model) with the best validation score."""
    best = None
    for s in settings:
        m = fit(s)
        v = val_score(m)
        if best is None or (v > best[0] if mode == "max" else v < best[0]):
            best = (v, s, m)
    return best[1], best[2]


def _np(dm, split: str) -> list[np.ndarray]:
    return [t.numpy() for t in dm.load_split(split)]  # the few-shot rows, if the model had them


def _stack(a, b):
    if hasattr(a, "tocsr"):  # TF-IDF's sparse rows
        from scipy.sparse import vstack

        return vstack([a, b]).tocsr()
    return np.concatenate([a, b])


# ---------------------------------------------------------------------------- classification
def _token_docs(x: np.ndarray) -> list[str]:
    return [" ".join(map(str, row[row > 0])) for row in x]  # id 0 is padding


def classification(dm, refit: bool) -> Baseline:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    (xt, yt), (xv, yv), (xs, ys) = (_np(dm, s) for s in ("train", "val", "test"))
    if dm.kind == "text":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(token_pattern=r"\S+", ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        xt = vec.fit_transform(_token_docs(xt))
        xv, xs = (vec.transform(_token_docs(a)) for a in (xv, xs))
        what, grid = "logistic regression on TF-IDF token 1-2-grams", (1.0, 3.0, 10.0, 30.0, 100.0)
    else:
        xt, xv, xs = (a.reshape(len(a), -1) for a in (xt, xv, xs))
        what, grid = "logistic regression on pixels", (0.01, 0.1, 1.0)

    # C is chosen on at most 10,000 training rows (MNIST's 50,000 take ~60 s a fit here), the
    # model then fitted once on all of them
    few = np.random.default_rng(0).permutation(len(yt))[:10_000]

    def fit_c(c, x=xt, y=yt, rows=few):
        return LogisticRegression(C=c, max_iter=300).fit(x[rows], y[rows])

    c, model = tuned(grid, fit_c, lambda m: accuracy_score(yv, m.predict(xv)), "max")
    if refit:
        model = fit_c(c, _stack(xt, xv), np.concatenate([yt, yv]), slice(None))
    elif len(yt) > len(few):
        model = fit_c(c, rows=slice(None))
    pred = model.predict(xs)
    metrics = {"test/acc": float(accuracy_score(ys, pred))}
    if len(np.unique(yt)) == 2:
        metrics["test/f1"] = float(f1_score(ys, pred))
        metrics["test/roc_auc"] = float(roc_auc_score(ys, model.predict_proba(xs)[:, 1]))
    else:
        metrics["test/f1_macro"] = float(f1_score(ys, pred, average="macro"))
    return Baseline(f"{what}, C={c:g}", metrics)


# ---------------------------------------------------------------------------------- forecast
def forecast(dm, refit: bool) -> Baseline:
    from scipy.linalg import LinAlgWarning
    from sklearn.linear_model import Ridge

    (xt, yt), (xv, yv), (xs, ys) = (_np(dm, s) for s in ("train", "val", "test"))
    xt, xv, xs = (a.reshape(len(a), -1) for a in (xt, xv, xs))

    def rmse(m, x, y):
        return float(np.sqrt(np.mean((m.predict(x) - y) ** 2)))

    # neighbouring steps of a series are nearly collinear: the small alphas solve, with a warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LinAlgWarning)
        alpha, model = tuned(
            (0.001, 0.01, 0.1, 1.0, 10.0),
            lambda a: Ridge(alpha=a).fit(xt, yt),
            lambda m: rmse(m, xv, yv),
            "min",
        )
        if refit:
            model = Ridge(alpha=alpha).fit(_stack(xt, xv), _stack(yt, yv))
    pred = model.predict(xs)
    metrics = {"test/rmse": rmse(model, xs, ys), "test/mae": float(np.mean(np.abs(pred - ys)))}
    return Baseline(f"ridge regression over the window, alpha={alpha:g}", metrics)


# ----------------------------------------------------------------------------------- anomaly
def anomaly(dm, refit: bool) -> Baseline:
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import average_precision_score, roc_auc_score

    (xt, _), (xv, yv), (xs, ys) = (_np(dm, s) for s in ("train", "val", "test"))

    def fit_n(n, x=xt):
        return IsolationForest(n_estimators=200, max_samples=n, random_state=0).fit(x)

    def pr_auc(m, x, y):
        return float(average_precision_score(y, -m.score_samples(x)))

    n, model = tuned((256, 1024), fit_n, lambda m: pr_auc(m, xv, yv), "max")
    if refit:  # val's normal rows only, as the model's refit
        model = fit_n(n, _stack(xt, xv[yv == 0]))
    score = -model.score_samples(xs)
    metrics = {
        "test/roc_auc": float(roc_auc_score(ys, score)),
        "test/pr_auc": float(average_precision_score(ys, score)),
    }
    return Baseline(f"Isolation Forest, 200 trees of {n} rows", metrics)


# ------------------------------------------------------------------------------------ rating
def _biases(u, i, r, n_users: int, n_items: int, reg: float, sweeps: int = 10):
    mu = float(r.mean())
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    for _ in range(sweeps):  # alternating ridge solutions, each in closed form
        bu = np.bincount(u, r - mu - bi[i], n_users) / (reg + np.bincount(u, None, n_users))
        bi = np.bincount(i, r - mu - bu[u], n_items) / (reg + np.bincount(i, None, n_items))
    return mu, bu, bi


def rating(dm, refit: bool) -> Baseline:
    arrays = {s: dm.arrays(s) for s in ("train", "val", "test")}
    n_users, n_items = dm.meta["n_users"], dm.meta["n_items"]
    lo, hi = dm.meta["rating_range"]

    def predict(model, split):
        mu, bu, bi = model
        a = arrays[split]
        return np.clip(mu + bu[a["u"]] + bi[a["i"]], lo, hi), a["r"]

    def rmse(model, split):
        p, r = predict(model, split)
        return float(np.sqrt(np.mean((p - r) ** 2)))

    def fit_reg(reg, splits=("train",)):
        u, i, r = (np.concatenate([arrays[s][k] for s in splits]) for k in "uir")
        return _biases(u, i, r.astype(float), n_users, n_items, reg)

    reg, model = tuned(
        (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0), fit_reg, lambda m: rmse(m, "val"), "min"
    )
    if refit:
        model = fit_reg(reg, ("train", "val"))
    p, r = predict(model, "test")
    metrics = {"test/rmse": rmse(model, "test"), "test/mae": float(np.mean(np.abs(p - r)))}
    return Baseline(f"biased baseline (mean + user + item bias), reg={reg:g}", metrics)


# ---------------------------------------------------------------------------- reconstruction
def reconstruction(dm, refit: bool, components: int) -> Baseline:
    from sklearn.decomposition import PCA

    xt, xv, xs = (_np(dm, s)[0] for s in ("train", "val", "test"))
    xt, xv, xs = (a.reshape(len(a), -1) for a in (xt, xv, xs))
    if refit:
        xt = _stack(xt, xv)
    k = min(components, *xt.shape)  # a code wider than the image: PCA keeps every component
    pca = PCA(n_components=k, random_state=0).fit(xt)
    back = pca.inverse_transform(pca.transform(xs))
    return Baseline(f"PCA, {k} components", {"test/mse": float(np.mean((back - xs) ** 2))})


BASELINES: dict[str, Callable[..., Baseline]] = {
    "classification": classification,
    "forecast": forecast,
    "anomaly": anomaly,
    "rating": rating,
    "reconstruction": reconstruction,
}
