"""`assay predict`: a registered model (models:/NAME@ALIAS, models:/NAME/VERSION) or a run's model
(runs:/RUN_ID/model) applied to a file, whatever its family. The model is an MLflow pyfunc that
carries its network, `assay.json` (its objective, what its outputs mean, and its input contract)
and, for text, its tokenizer. This module only reads the file into the raw form the contract
takes and calls the pyfunc's predict on it (see `assay.tracking.contract`), so MLflow's loader
and `mlflow models serve` give the same answers and refuse the same input:

  classification   images (.npy/.npz, pixels in the data set's own range: digits 0..16,
                   MNIST 0..255) or texts (.txt, one per line; .csv with a `text` column)
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

from pathlib import Path

import numpy as np

from assay import tracking
from assay.config import TrackingConfig
from assay.errors import UserError
from assay.objectives import Prediction, get_objective
from assay.tracking.contract import ContractError


class PredictError(UserError, ValueError):
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


def load(model_uri: str, root: Path, config: TrackingConfig | None = None):
    """The pyfunc at `model_uri` in the project's store (`config`'s, by default the
    environment's or the project's own file) and its card (assay.json)."""
    uri = tracking.tracking_uri(config or TrackingConfig(), root)
    tracking.ensure_store(uri)
    try:
        model = tracking.load_model(model_uri, uri)
    except (tracking.TrackingError, OSError) as e:
        raise PredictError(
            f"cannot load model {model_uri} from {uri}: {_first_line(e)}{_known_models_hint(uri)}"
        ) from None
    except ModuleNotFoundError as e:
        if e.name != "models" and not (e.name or "").startswith("models."):
            raise
        raise PredictError(  # pickled as `models.cnn.CNN`, now `assay.models.cnn.CNN`
            f"{model_uri} was logged by an older Assay, whose architectures were the top-level "
            "package `models` (now `assay.models`): retrain it (`dvc repro`) and register it again"
        ) from None
    card = tracking.card_of(model)
    if card is None or "input" not in card:
        raise PredictError(
            f"{model_uri} is not an Assay model with an input contract (models logged before it "
            "carried one are not): retrain it (`dvc repro`) and register it again"
        )
    return model, card


def _apply(model, raw):
    """The pyfunc's answer; out-of-contract input becomes a PredictError with its message."""
    try:
        return model.predict(raw)
    except ContractError as e:  # the message as MLflow's loader and scoring server give it
        raise PredictError(e.message) from None


def _codes(card, input, samples, seed, label) -> np.ndarray:
    """A generator's input: the file's codes, or `samples` random ones: z (latent) followed, for
    a conditional GAN, by a one-hot class (0, 1, ... in turn, or all `label`)."""
    k, width = card["input"]["classes"], card["input"]["shape"][0]
    if label is not None and not (0 <= label < k):
        allowed = f"0..{k - 1}" if k else "none: this GAN is not conditional"
        raise PredictError(f"--label {label}: allowed classes {allowed}")
    if input is not None:
        if label is not None:
            raise PredictError(
                "--label picks the class of random codes; with --input the codes say it"
            )
        return load_input(input)
    z = np.random.default_rng(seed).standard_normal((samples, width)).astype(np.float32)
    if k:
        classes = np.full(samples, label) if label is not None else np.arange(samples) % k
        z[:, width - k :] = np.eye(k, dtype=np.float32)[classes]
    return z


def _read_table(path: Path, what: str) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except Exception as e:  # pandas raises many kinds; all mean "not a CSV we can read"
        raise PredictError(f"input {path}: cannot read it as CSV ({_first_line(e)})") from None
    return list(df.columns), df


def _texts(path: Path) -> list:
    if not path.exists():
        raise PredictError(f"input {path} does not exist")
    if path.suffix == ".csv":
        cols, df = _read_table(path, "texts")
        if "text" not in cols:
            raise PredictError(
                f"input {path}: a CSV of texts needs a `text` column (it has {cols})"
            )
        return df["text"].tolist()  # as read: an empty cell stays NaN, which the model refuses
    if path.suffix != ".txt":
        raise PredictError(
            f"input {path}: texts come as .txt (one per line) or .csv, got {path.suffix}"
        )
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise PredictError(f"input {path} has no text")
    return lines


def _table_or_array(path: Path, what: str):
    """A CSV as a DataFrame (the model picks its columns by name), else a .npy/.npz array."""
    if path.suffix == ".csv":
        if not path.exists():
            raise PredictError(f"input {path} does not exist")
        return _read_table(path, what)[1]
    return load_input(path)


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
    model, card = load(model_uri, root)
    objective, kind = card["objective"], card["input"]["kind"]
    codes = kind == "codes"  # a generator: its input may be made here
    if input is None and not codes:
        raise PredictError(f"{model_uri} is a {objective} model: give --input")
    if label is not None and not codes:
        raise PredictError(f"--label is for a conditional GAN; {model_uri} is a {objective} model")
    raw = _codes(card, input, samples, seed, label) if codes else read_raw(kind, input)
    return get_objective(objective).decode(_apply(model, raw), raw, card)


def read_raw(kind: str, input: Path):
    """The file `input` in the raw form a model of the contract kind `kind` takes."""
    if kind == "text":
        return _texts(input)
    if kind == "pixels":
        return load_input(input)
    return _table_or_array(input, kind)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _known_models_hint(uri: str) -> str:
    try:
        names = tracking.registered_names(uri)
    except Exception:  # the hint is a courtesy; never hide the real error behind another
        return ""
    return f"; registered models: {', '.join(names) or 'none (run `dvc repro` first)'}"
