"""`assay predict`: a registered model (models:/NAME@ALIAS, models:/NAME/VERSION) or a run's model
(runs:/RUN_ID/model) applied to a file, whatever its family. The model carries `assay.json` (its
objective and what its outputs mean) and, for text, its tokenizer, so nothing else is needed:

  classification   images (.npy/.npz) or texts (.txt, one per line; .csv with a `text` column)
                   -> class and probability
  forecast         windows (.npy/.npz (N, window, features) or .csv rows of the features; the
                   last `window` rows are used) -> the next `horizon` values
  anomaly          rows (.npy/.npz/.csv (N, features)) -> anomaly score
  reconstruction   images -> reconstructions (.npy)
  generation       latent codes (.npy (N, latent); a conditional GAN's end with a one-hot class,
                   (N, latent + classes)), or none: `--samples N` random codes (conditional:
                   classes 0, 1, ... in turn, or all `--label K`) -> images
  rating           (user, item) pairs in MovieLens ids (.csv `user,item` or .npy (N, 2)) -> rating
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from assay import tracking
from assay.config import TrackingConfig


class PredictError(ValueError):
    pass


def load_input(path: Path) -> np.ndarray:
    if not path.exists():
        raise PredictError(f"input {path} does not exist")
    if path.suffix not in (".npy", ".npz"):
        raise PredictError(
            f"input {path}: expected a .npy or .npz file, got {path.suffix or 'none'}"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise PredictError(f"input {path} is not a readable numpy file: {e}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        key = "x" if "x" in keys else keys[0] if len(keys) == 1 else None
        if key is None:
            raise PredictError(f"input {path}: an .npz needs an array named 'x' (it has {keys})")
        data = data[key]
    return data


def conform(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Bring `x` to float32 (N, *shape) in [0, 1]: accepts (N, *shape), (N, H, W) for one channel,
    (N, C*H*W) flat, or a single example; uint8 pixels are scaled by 1/255."""
    if x.dtype.kind not in "uif" or x.dtype == np.bool_:
        raise PredictError(
            f"input dtype {x.dtype} is not numeric; expected float32 or uint8 pixels"
        )
    n_feat = int(np.prod(shape))
    if x.shape == shape or (x.ndim == 1 and x.size == n_feat) or x.shape == shape[1:]:
        x = x[None]
    if x.shape[1:] != shape:
        if x.ndim >= 2 and int(np.prod(x.shape[1:])) == n_feat:
            x = x.reshape(len(x), *shape)
        else:
            raise PredictError(
                f"input shape {x.shape} does not fit the model's input "
                f"(N, {', '.join(map(str, shape))})"
            )
    if x.dtype == np.uint8:
        x = x / 255.0
    x = x.astype(np.float32)
    if x.min() < 0 or x.max() > 1:
        raise PredictError(
            f"input values span [{x.min():.3g}, {x.max():.3g}]; expected [0, 1] "
            "floats or uint8 pixels"
        )
    return x


@dataclass
class Prediction:
    objective: str
    columns: list[str]  # the table / CSV header
    rows: list[list]  # one per input example
    array: np.ndarray  # the raw output (probabilities, forecasts, images, ...)
    images: bool = False  # array is images (N, C, H, W): written as .npy and a PNG grid


def _load(model_uri: str, root: Path):
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking.tracking_uri(TrackingConfig(), root)
    tracking.ensure_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
        model = mlflow.pytorch.load_model(str(local), map_location="cpu")
    except (MlflowException, OSError) as e:
        raise PredictError(
            f"cannot load model {model_uri} from {uri}: {_first_line(e)}{_known_models_hint(uri)}"
        ) from None
    card_path = local / "extra_files" / "assay.json"
    card = (
        json.loads(card_path.read_text()) if card_path.exists() else {"objective": "classification"}
    )
    info = mlflow.models.Model.load(str(local / "MLmodel"))
    spec = info.signature.inputs.inputs[0] if info.signature else None
    shape = tuple(spec.shape[1:]) if spec is not None else None
    return model.eval(), card, shape, local


def _generate(model, card, width, input, samples, seed, label) -> Prediction:
    """Images from codes: z (latent) followed, for a conditional GAN, by a one-hot class."""
    k = card.get("code", {}).get("classes", 0)
    if label is not None and not (0 <= label < k):
        allowed = f"0..{k - 1}" if k else "none: this GAN is not conditional"
        raise PredictError(f"--label {label}: allowed classes {allowed}")
    if input is None:
        z = np.random.default_rng(seed).standard_normal((samples, width)).astype(np.float32)
        if k:
            classes = np.full(samples, label) if label is not None else np.arange(samples) % k
            z[:, width - k :] = np.eye(k, dtype=np.float32)[classes]
    else:
        if label is not None:
            raise PredictError(
                "--label picks the class of random codes; with --input the codes say it"
            )
        z = load_input(input)
        if z.size % width:
            what = f"{width - k} latent + {k} one-hot class" if k else "latent"
            raise PredictError(f"input {input}: codes must be (N, {width}) ({what} columns)")
        z = z.astype(np.float32).reshape(-1, width)
    imgs = _run(model, z)
    if k:
        rows = [[i, int(c)] for i, c in enumerate(z[:, width - k :].argmax(1))]
        return Prediction("generation", ["index", "class"], rows, imgs, True)
    return Prediction("generation", ["index"], [[i] for i in range(len(imgs))], imgs, True)


def _run(model, x: np.ndarray, dtype=np.float32) -> np.ndarray:
    import torch

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x.astype(dtype)))
        return torch.cat([model(part) for part in torch.split(t, 4096)]).numpy()


def _read_table(path: Path, what: str) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as e:  # pandas raises many kinds; all mean "not a CSV we can read"
        raise PredictError(f"input {path}: cannot read it as CSV ({_first_line(e)})") from None
    return list(df.columns), df


def _texts(path: Path) -> list[str]:
    if not path.exists():
        raise PredictError(f"input {path} does not exist")
    if path.suffix == ".csv":
        cols, df = _read_table(path, "texts")
        if "text" not in cols:
            raise PredictError(
                f"input {path}: a CSV of texts needs a `text` column (it has {cols})"
            )
        return [str(t) for t in df["text"]]
    if path.suffix != ".txt":
        raise PredictError(
            f"input {path}: texts come as .txt (one per line) or .csv, got {path.suffix}"
        )
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise PredictError(f"input {path} has no text")
    return lines


def _numeric(path: Path, n_features: int, what: str) -> np.ndarray:
    if path.suffix == ".csv":
        if not path.exists():
            raise PredictError(f"input {path} does not exist")
        cols, df = _read_table(path, what)
        x = df.to_numpy()
    else:
        x = load_input(path)
    if x.dtype.kind not in "uif":
        raise PredictError(f"input dtype {x.dtype} is not numeric; expected {what}")
    if x.shape[-1] != n_features:
        raise PredictError(f"input shape {x.shape}: expected {what} with {n_features} columns")
    return x.astype(np.float32)


def predict(
    model_uri: str,
    input: Path | None,
    root: Path,
    *,
    samples: int = 16,
    seed: int = 0,
    label: int | None = None,
) -> Prediction:
    """Apply a logged Assay model to the file `input` (see the module doc for formats)."""
    model, card, shape, local = _load(model_uri, root)
    objective = card["objective"]
    if input is None and objective != "generation":
        raise PredictError(f"{model_uri} is a {objective} model: give --input")

    if objective == "classification":
        classes = card.get("classes") or []
        if card.get("kind") == "text":
            from tokenizers import Tokenizer

            from assay.data.text import encode

            tok = Tokenizer.from_file(str(local / "extra_files" / "tokenizer.json"))
            texts = _texts(input)
            probs = _run(model, encode(tok, texts, card["max_len"]), np.int64)
            labels = [texts[i][:60] for i in range(len(texts))]
        else:
            x = conform(load_input(input), shape)
            probs = _run(model, x)
            labels = list(range(len(probs)))
        pred = probs.argmax(1)
        names = [classes[k] if k < len(classes) else str(k) for k in pred]
        rows = [
            [lab, int(k), name, float(p)]
            for lab, k, name, p in zip(labels, pred, names, probs.max(1), strict=True)
        ]
        head = "text" if card.get("kind") == "text" else "index"
        return Prediction(objective, [head, "predicted", "class", "probability"], rows, probs)

    if objective == "forecast":
        window, n_feat = card["task"]["in_shape"]
        x = _numeric(input, n_feat, f"windows of the features {card.get('features')}")
        if x.ndim == 2:  # one series, rows = steps: forecast after its last `window` rows
            if len(x) < window:
                raise PredictError(f"input has {len(x)} steps; the model needs the last {window}")
            x = x[None, -window:]
        if x.ndim != 3 or x.shape[1] != window:
            raise PredictError(f"input shape {x.shape}: expected (N, {window}, {n_feat})")
        y = _run(model, x)
        cols = ["index", *[f"t+{h + 1}" for h in range(y.shape[1])]]
        return Prediction(objective, cols, [[i, *map(float, r)] for i, r in enumerate(y)], y)

    if objective == "anomaly":
        n_feat = card["task"]["in_shape"][0]
        x = _numeric(input, n_feat, f"rows of the features {card.get('features')}")
        scores = _run(model, x.reshape(-1, n_feat))
        return Prediction(
            objective,
            ["index", "anomaly_score"],
            [[i, float(v)] for i, v in enumerate(scores)],
            scores,
        )

    if objective == "reconstruction":
        x = conform(load_input(input), shape)
        recon = _run(model, x)
        err = ((recon - x) ** 2).reshape(len(x), -1).mean(1)
        return Prediction(
            objective, ["index", "mse"], [[i, float(e)] for i, e in enumerate(err)], recon, True
        )

    if label is not None and objective != "generation":
        raise PredictError(f"--label is for a conditional GAN; {model_uri} is a {objective} model")
    if objective == "generation":
        return _generate(model, card, shape[0], input, samples, seed, label)

    # rating: (user, item) pairs in MovieLens ids
    users, items = card["user_ids"], card["item_ids"]
    if input.suffix == ".csv":
        cols, df = _read_table(input, "pairs")
        if not {"user", "item"} <= set(cols):
            raise PredictError(
                f"input {input}: a CSV of pairs needs `user` and `item` columns (it has {cols})"
            )
        pairs = df[["user", "item"]].to_numpy()
    else:
        pairs = load_input(input)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype.kind not in "iu":
        raise PredictError(
            f"input shape {pairs.shape} ({pairs.dtype}): expected integer (N, 2) user, item ids"
        )
    u_index, i_index = {v: k for k, v in enumerate(users)}, {v: k for k, v in enumerate(items)}
    unknown = [(u, i) for u, i in pairs.tolist() if u not in u_index or i not in i_index]
    if unknown:
        raise PredictError(
            f"{len(unknown)} pair(s) name a user or item the model never saw, e.g. {unknown[0]}; "
            f"users are {min(users)}..{max(users)}, items {min(items)}..{max(items)}"
        )
    idx = np.array([[u_index[u], i_index[i]] for u, i in pairs.tolist()], np.int64)
    lo, hi = card["task"]["rating_range"]
    r = np.clip(_run(model, idx, np.int64), lo, hi)
    rows = [[int(u), int(i), float(v)] for (u, i), v in zip(pairs.tolist(), r, strict=True)]
    return Prediction(objective, ["user", "item", "rating"], rows, r)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _known_models_hint(uri: str) -> str:
    from mlflow import MlflowClient

    try:
        names = [m.name for m in MlflowClient(uri, registry_uri=uri).search_registered_models()]
    except Exception:  # the hint is a courtesy; never hide the real error behind another
        return ""
    return f"; registered models: {', '.join(names) or 'none (run `dvc repro` first)'}"
