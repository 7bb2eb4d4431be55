"""A logged model's input contract: the raw input it takes and how that becomes the network's.

`assay predict`, `mlflow.pyfunc.load_model(uri).predict` and `mlflow models serve` all run
`AssayModel.predict` below, so on the same raw input they give the same answer, and they refuse
out-of-contract input with the same message. `describe` writes the contract into the model's
`assay.json` (`input`) when it is logged; `prepare` applies it:

  pixels   images in the data set's own raw range (digits 0..16, MNIST 0..255), ints or floats:
           (N, C, H, W), (N, H, W) for one channel, (N, C*H*W) flat, or one image; divided by
           the data set's pixel scale here, as in training
  text     one text per string: a list, a 1-D array, or a table's `text` column; the model's
           own WordPiece tokenizer turns them into ids
  windows  series in their own units: (N, window, features), or one series (steps, features)
           whose last `window` steps are used; a table's columns are picked by feature name
  rows     tabular rows in their own units: (N, features)
  pairs    MovieLens (user, item) ids: (N, 2) integers or a table with `user`, `item` columns
  codes    a GAN's codes (N, latent [+ classes]): z, then a one-hot class when conditional

NaN and inf are refused naming their rows (JSON nulls count as NaN); so are pixels outside the
raw range and float pixels that all lie in [0, 1] (almost surely scaled already).

MLflow's own input schema enforcement is not used (the signature has outputs only): a TensorSpec
admits one dtype and one rank, so raw uint8 digits or (N, 64) rows would be refused, and the
scoring server casts JSON to the spec's dtype (a uint8 spec reads 0.5 as 0, silently), the very
error this module exists to prevent. The contract is also in the MLmodel's `metadata`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel
from tokenizers import Tokenizer

from assay.tokens import encode


class ContractError(MlflowException):
    """Input outside the model's contract: HTTP 400 from `mlflow models serve` (the scoring
    server answers an MlflowException with its error code), exit code 2 from `assay predict`."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def describe(card: dict, meta: dict) -> dict:
    """The `input` section of assay.json, from the model's card and its data's meta."""
    task, kind = card["task"], card["kind"]
    if "code" in card:  # a generator's card says how its codes are made
        code = card["code"]
        width = code["latent_dim"] + code["classes"]
        return {"kind": "codes", "shape": [width], "dtypes": "floats", **code}
    if kind == "image":
        scale = float(meta["pixel_scale"])
        return {
            "kind": "pixels",
            "shape": list(task["in_shape"]),
            "dtypes": "integers or floats",
            "range": [0, min(scale, 255.0)],  # digits 0..16; MNIST stores k for k/256: 0..255
            "scale": scale,
            "accepts": ["(N, C, H, W)", "(N, H, W) one channel", "(N, C*H*W)", "one image"],
        }
    if kind == "text":
        return {"kind": "text", "dtypes": "strings", "tokenizer": "tokenizer.json",
                "max_len": meta["max_len"]}  # fmt: skip
    if kind == "timeseries":
        return {
            "kind": "windows",
            "shape": list(task["in_shape"]),
            "features": meta["features"],
            "units": meta.get("units"),
            "accepts": ["(N, window, features)", "(steps >= window, features): the last window"],
        }
    if kind == "tabular":
        return {"kind": "rows", "shape": list(task["in_shape"]), "features": meta["features"]}
    users, items = meta["user_ids"], meta["item_ids"]
    return {
        "kind": "pairs",
        "columns": ["user", "item"],
        "users": [min(users), max(users), len(users)],  # MovieLens ids: min, max, how many
        "items": [min(items), max(items), len(items)],
    }


def raw_example(card: dict, dm, n: int = 2):
    """A few validation examples in the raw form the contract takes (the GAN's are codes: the
    caller's). Logged as the model's input example."""
    kind = card["input"]["kind"]
    d = dm.arrays("val")
    if kind == "text":
        tok = Tokenizer.from_file(str(dm.tokenizer_path))
        return [tok.decode(ids.tolist()) for ids in d["x"][:n]]
    if kind == "pairs":
        users, items = card["user_ids"], card["item_ids"]
        return np.array([[users[u], items[i]] for u, i in zip(d["u"][:n], d["i"][:n], strict=True)])
    return d["x"][:n]


# ------------------------------------------------------------------------------------ checks
def _rows(idx) -> str:
    idx = [int(i) for i in idx]
    shown = ", ".join(map(str, idx[:10])) + (f" and {len(idx) - 10} more" if len(idx) > 10 else "")
    return f"row {shown}" if len(idx) == 1 else f"rows {shown}"


def _numbers(raw, what: str) -> np.ndarray:
    """Any array-like (a numpy array, JSON's nested lists, a DataFrame) as a numeric array."""
    try:
        x = raw.to_numpy() if hasattr(raw, "to_numpy") else np.asarray(raw)
        if x.dtype == object:  # JSON with nulls or mixed ints and floats; null -> NaN
            x = x.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ContractError(f"input is not a numeric array ({e}); expected {what}") from None
    if x.dtype.kind not in "uif":
        raise ContractError(f"input dtype {x.dtype} is not numeric; expected {what}")
    return x


def _finite(x: np.ndarray) -> None:
    """Refuse NaN and inf, naming the rows (the first axis): a NaN would otherwise become a
    NaN output, a class 0, and hide the range check of the other rows."""
    if x.dtype.kind == "f" and x.size:
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))
        if len(bad):
            raise ContractError(
                f"{_rows(bad)} {'contains' if len(bad) == 1 else 'contain'} NaN or inf (a JSON "
                "null counts as NaN); the model needs "
                "finite numbers: fix or drop those rows"
            )


def _columns(raw, names: list[str]):
    """A table's named columns in the model's order, when it has them all."""
    if hasattr(raw, "columns") and set(names) <= set(map(str, raw.columns)):
        return raw[names]
    return raw


# ------------------------------------------------------------------------------ per kind
def _pixels(c: dict, raw) -> np.ndarray:
    shape, (lo, hi), scale = tuple(c["shape"]), c["range"], c["scale"]
    x = _numbers(raw, f"pixels in {lo}..{hi:g}")
    n_feat = int(np.prod(shape))
    if x.shape == shape or x.shape == shape[1:] or (x.ndim == 1 and x.size == n_feat):
        x = x[None]  # one image
    if x.shape[1:] != shape:
        if x.ndim < 2 or int(np.prod(x.shape[1:])) != n_feat:
            raise ContractError(
                f"input shape {x.shape} does not fit the model's input "
                f"(N, {', '.join(map(str, shape))})"
            )
        x = x.reshape(len(x), *shape)
    _finite(x)
    flat = x.reshape(len(x), -1)
    out = np.flatnonzero(((flat < lo) | (flat > hi)).any(1)) if x.size else []
    if len(out):
        raise ContractError(
            f"pixel values span [{x.min():g}, {x.max():g}] ({_rows(out)} outside {lo:g}..{hi:g}); "
            f"this model takes its data set's raw pixels, {lo:g}..{hi:g}, and scales them itself"
        )
    if x.dtype.kind == "f" and hi > 1 and x.size and 0 < x.max() <= 1:
        raise ContractError(
            f"float pixels all within [0, 1]: they look scaled already; this model takes its "
            f"data set's raw pixels, {lo:g}..{hi:g}, and divides them by {scale:g} itself"
        )
    return (x.astype(np.float64) / scale).astype(np.float32)


def _texts(c: dict, raw, tokenizer) -> np.ndarray:
    if hasattr(raw, "columns"):
        cols = list(raw.columns)
        if "text" not in cols and len(cols) != 1:
            raise ContractError(f"a table of texts needs a `text` column (it has {cols})")
        raw = raw["text" if "text" in cols else cols[0]]
    if isinstance(raw, str):
        raw = [raw]
    texts = np.asarray(raw, dtype=object)
    if texts.ndim == 2 and texts.shape[1] == 1:
        texts = texts[:, 0]
    if texts.ndim != 1:
        raise ContractError(f"input shape {texts.shape}: expected one text per row")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ContractError(f"not a text in {_rows(bad)}: each row must be one non-empty string")
    return encode(tokenizer, list(texts), c["max_len"])


def _windows(c: dict, raw) -> np.ndarray:
    (window, n), feats = c["shape"], c["features"]
    x = _numbers(_columns(raw, feats), f"windows of the features {feats}")
    if x.ndim < 2 or x.shape[-1] != n:
        raise ContractError(
            f"input shape {x.shape}: expected windows of the features {feats} with {n} columns"
        )
    _finite(x)
    if x.ndim == 2:  # one series, rows = steps: forecast after its last `window` rows
        if len(x) < window:
            raise ContractError(f"input has {len(x)} steps; the model needs the last {window}")
        x = x[None, -window:]
    if x.ndim != 3 or x.shape[1] != window:
        raise ContractError(f"input shape {x.shape}: expected (N, {window}, {n})")
    return x.astype(np.float32)


def _table_rows(c: dict, raw) -> np.ndarray:
    n, feats = c["shape"][0], c["features"]
    x = _numbers(_columns(raw, feats), f"rows of the features {feats}")
    if x.ndim == 1 and x.size == n:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != n:
        raise ContractError(
            f"input shape {x.shape}: expected rows of the features {feats} with {n} columns"
        )
    _finite(x)
    return x.astype(np.float32)


def _pairs(card: dict, raw) -> np.ndarray:
    if hasattr(raw, "columns"):
        cols = list(raw.columns)
        if not {"user", "item"} <= set(cols):
            raise ContractError(f"a table of pairs needs `user` and `item` columns (it has {cols})")
        raw = raw[["user", "item"]]
    x = _numbers(raw, "integer (N, 2) user, item ids")
    if x.ndim == 1 and x.size == 2:
        x = x[None]
    if x.ndim == 2:
        _finite(x)
    if x.ndim != 2 or x.shape[1] != 2 or (x != np.round(x)).any():
        raise ContractError(
            f"input shape {x.shape} ({x.dtype}): expected integer (N, 2) user, item ids"
        )
    users, items = card["user_ids"], card["item_ids"]
    u_index, i_index = {v: k for k, v in enumerate(users)}, {v: k for k, v in enumerate(items)}
    pairs = x.astype(np.int64).tolist()
    unknown = [(u, i) for u, i in pairs if u not in u_index or i not in i_index]
    if unknown:
        raise ContractError(
            f"{len(unknown)} pair(s) name a user or item the model never saw, e.g. {unknown[0]}; "
            f"users are {min(users)}..{max(users)}, items {min(items)}..{max(items)}"
        )
    return np.array([[u_index[u], i_index[i]] for u, i in pairs], np.int64).reshape(-1, 2)


def _codes(c: dict, raw) -> np.ndarray:
    width, k = c["shape"][0], c["classes"]
    x = _numbers(raw, f"(N, {width}) codes")
    if x.ndim == 1 and x.size == width:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != width:
        what = f"{width - k} latent + {k} one-hot class" if k else "latent"
        raise ContractError(f"codes must be (N, {width}) ({what} columns); got {x.shape}")
    _finite(x)
    if k:
        onehot = x[:, width - k :]
        bad = np.flatnonzero(~(np.isin(onehot, (0, 1)).all(1) & (onehot.sum(1) == 1)))
        if len(bad):
            raise ContractError(f"{_rows(bad)}: the last {k} columns must be a one-hot class")
    return x.astype(np.float32)


def prepare(card: dict, raw, tokenizer=None) -> np.ndarray:
    """Raw input -> the network's input, or a ContractError saying what is wrong (an input
    with no rows too: every caller, predict, explain and the servers, refuses it)."""
    x = _read(card, raw, tokenizer)
    if not len(x):
        raise ContractError("the input has no rows")
    return x


def _read(card: dict, raw, tokenizer) -> np.ndarray:
    c = card["input"]
    kind = c["kind"]
    if kind == "pixels":
        return _pixels(c, raw)
    if kind == "text":
        return _texts(c, raw, tokenizer)
    if kind == "windows":
        return _windows(c, raw)
    if kind == "rows":
        return _table_rows(c, raw)
    if kind == "pairs":
        return _pairs(card, raw)
    return _codes(c, raw)


def apply(card: dict, net, raw, tokenizer=None):
    """The model's answer to raw input: classification: probabilities (N, K); forecast: (N,
    horizon) in the target's units; anomaly: scores (N,); rating: (N,) clipped to the rating
    range; generation: images (N, C, H, W) in [0, 1]; reconstruction: {"reconstruction": images
    in [0, 1] (the scaled input's), "mse": (N,) per image}; contrastive: projections (N, 64);
    masked tokens: the most likely token id at every position (N, T)."""
    return run(card, net, prepare(card, raw, tokenizer))


def run(card: dict, net, x: np.ndarray):
    """`apply` after `prepare`: the net on the prepared input `x`, and what its objective does
    to the answer. `assay serve` prepares each request, then runs a batch of them at once."""
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x))
        out = torch.cat([net(part) for part in torch.split(t, 4096)]).numpy()
    spec = _output(card)
    if "clip" in spec:  # ratings: into the rating range
        out = np.clip(out, *spec["clip"])
    if spec.get("error") == "mse":  # reconstructions: with each input's error
        return {"reconstruction": out, "mse": ((out - x) ** 2).reshape(len(x), -1).mean(1)}
    return out


def _output(card: dict) -> dict:
    """What the answer needs after the net (`Objective.output`, in the card since it has one)."""
    if "output" in card:
        return card["output"]
    # a model logged before its card said: what its objective did then
    if card["objective"] == "rating":
        return {"clip": card["task"]["rating_range"]}
    return {"error": "mse"} if card["objective"] == "reconstruction" else {}


class AssayModel(PythonModel):
    """The logged model: the torch inference net (`net`, a pickled module), its card
    (`card`, assay.json, with the input contract) and, for text, its tokenizer."""

    def load_context(self, context) -> None:
        art = context.artifacts
        self.card = json.loads(Path(art["card"]).read_text())
        # our own classes (models.*) come back: the net was saved whole, as mlflow.pytorch did
        self.net = torch.load(art["net"], map_location="cpu", weights_only=False).eval()
        self.tokenizer = None
        if "tokenizer" in art:
            self.tokenizer = Tokenizer.from_file(art["tokenizer"])

    # The hint is one MLflow infers no schema from: it then neither validates nor converts the
    # input (nor warns that hints are missing); the contract takes arrays, lists and tables.
    def predict(self, context, model_input: np.ndarray, params=None):
        return apply(self.card, self.net, model_input, self.tokenizer)


# ---------------------------------------------- MLflow's scoring protocol, for `assay serve`
# A request body read as `mlflow models serve` reads it (its own `infer_and_parse_data`), then
# by the contract; an answer written as it writes one; errors as its JSON.
RequestError = MlflowException  # what a bad request raises: bad JSON, no known format, contract


def parse_request(card: dict, body: bytes, tokenizer=None) -> np.ndarray:
    """A POST /invocations body -> the network's input (raises RequestError, HTTP 400)."""
    # MLflow's scoring server (FastAPI, ~0.5 s): loaded by a server, not by every model load
    from mlflow.pyfunc.scoring_server import SUPPORTED_FORMATS, infer_and_parse_data

    try:
        payload = json.loads(body)
    except ValueError as e:
        raise MlflowException(f"the body is not JSON: {e}", error_code=BAD_REQUEST) from None
    if not isinstance(payload, dict):
        raise MlflowException(
            f"expected a JSON object with one of {sorted(SUPPORTED_FORMATS)}",
            error_code=BAD_REQUEST,
        )
    data = infer_and_parse_data({k: v for k, v in payload.items() if k in SUPPORTED_FORMATS})
    return prepare(card, data, tokenizer)


def answer_json(out) -> str:
    """{"predictions": ...} as MLflow's scoring server writes it."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    buf = io.StringIO()
    predictions_to_json(out, buf)
    return buf.getvalue()


def error_json(e: MlflowException) -> str:
    return e.serialize_as_json()
