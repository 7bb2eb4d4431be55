"""`assay explain`: why a registered model answered as it did, on the user's own file.

The model is the logged pyfunc `assay predict` uses (models:/NAME@ALIAS, runs:/ID/model), its
input read and checked by the same contract, so explain sees exactly what predict and MLflow's
scoring server see. Its network is then attributed with captum (`assay.objectives.attribution`):

  image classifiers   Integrated Gradients and a saliency map over pixels (explain.png)
  text classifiers    Integrated Gradients over tokens (explain.html highlights them; explain.png)
  forecasters         Integrated Gradients of the mean forecast over the window's steps and
                      features (explain.png)

with the numbers in attributions.npz. Other objectives (autoencoders, anomaly scores, ratings,
the GAN) are refused before any compute: their answer is not a class or a forecast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from assay.objectives import attribution
from assay.predict import PredictError, load, read_raw
from assay.tokens import PAD
from assay.tracking.contract import ContractError, prepare

EXPLAINED = {"classification": ("pixels", "text"), "forecast": ("windows",)}


@dataclass
class Explanation:
    objective: str
    kind: str
    files: list[Path]
    rows: list[list]  # example, answer, score, IG delta, what mattered most
    columns: list[str]


def explain(model_uri: str, input: Path, root: Path, out: Path, limit: int = 8) -> Explanation:
    """Attributions for the first `limit` examples of `input` under the model `model_uri`,
    written into the folder `out`."""
    if limit < 1:
        raise PredictError(f"--limit {limit}: explain at least 1 example")
    model, card = load(model_uri, root)
    objective, kind = card["objective"], card["input"]["kind"]
    if kind not in EXPLAINED.get(objective, ()):
        which = ", ".join(f"{o} ({'/'.join(k)})" for o, k in EXPLAINED.items())
        raise PredictError(
            f"{model_uri} is a {objective} model (input: {kind}); explain attributes the answers "
            f"of {which} models"
        )
    raw = read_raw(kind, input)
    python_model = model.unwrap_python_model()
    try:
        x = prepare(card, raw, python_model.tokenizer)
    except ContractError as e:  # the message predict and the scoring server give
        raise PredictError(e.message) from None
    x = torch.from_numpy(np.ascontiguousarray(x[:limit]))
    a = attribution.attribute(python_model.net, x, kind, probabilities=objective != "forecast")
    tokens = _tokens(python_model.tokenizer, x.numpy()) if kind == "text" else None
    title = f"{model_uri} on {input.name}"
    shown = x.numpy()
    files = attribution.write(
        a,
        shown,
        out,
        title,
        tokens=tokens,
        names=card.get("classes"),
        features=card["input"].get("features"),
    )
    return Explanation(objective, kind, files, *_table(a, card, tokens))


def _tokens(tokenizer, ids: np.ndarray) -> list[list[str]]:
    pad = tokenizer.token_to_id(PAD)
    return [[tokenizer.id_to_token(int(i)) for i in row if i != pad] for row in ids]


def _table(a: attribution.Attribution, card: dict, tokens) -> tuple[list[list], list[str]]:
    names = card.get("classes") or []
    rows = []
    for k in range(len(a.ig)):
        if a.kind == "text":
            order = np.argsort(-a.ig[k][: len(tokens[k])])[:5]
            top = " ".join(tokens[k][j] for j in order)
        elif a.kind == "windows":
            feats = card["input"].get("features") or []
            per_feature = np.abs(a.ig[k]).sum(0)
            share = per_feature / (per_feature.sum() or 1.0)  # all zero: 0%, not NaN
            top = ", ".join(
                f"{feats[j] if j < len(feats) else j} {share[j]:.0%}"
                for j in np.argsort(-per_feature)[:3]
            )
        else:
            flat = a.ig[k].reshape(-1)
            top = f"{(flat > 0).mean():.0%} of pixels for it"
        if a.target is None:
            answer = "forecast"
        else:
            t = int(a.target[k])
            answer = names[t] if t < len(names) else str(t)
        rows.append([k, answer, float(a.score[k]), float(a.delta[k]), top])
    what = {"text": "top tokens", "windows": "features by |IG|", "pixels": "IG"}[a.kind]
    return rows, ["example", "answer", "score", "IG delta", what]
