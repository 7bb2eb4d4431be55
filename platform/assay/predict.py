"""`assay predict`: a registered model (models:/NAME@ALIAS, models:/NAME/VERSION) or a run's model
(runs:/RUN_ID/model) applied to a .npy/.npz file of images."""

from __future__ import annotations

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


def predict(model_uri: str, x: np.ndarray, root: Path) -> np.ndarray:
    """Class probabilities (N, K) for images `x`."""
    import mlflow
    import torch
    from mlflow.exceptions import MlflowException

    uri = tracking.tracking_uri(TrackingConfig(), root)
    tracking.ensure_store(uri)
    try:
        info = mlflow.models.get_model_info(model_uri)
        model = mlflow.pytorch.load_model(model_uri, map_location="cpu")
    except (MlflowException, OSError) as e:
        raise PredictError(
            f"cannot load model {model_uri} from {uri}: {_first_line(e)}{_known_models_hint(uri)}"
        ) from None
    spec = info.signature.inputs.inputs[0] if info.signature else None
    shape = tuple(spec.shape[1:]) if spec is not None else tuple(x.shape[1:])
    x = conform(x, shape)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _known_models_hint(uri: str) -> str:
    from mlflow import MlflowClient

    try:
        names = [m.name for m in MlflowClient(uri, registry_uri=uri).search_registered_models()]
    except Exception:  # the hint is a courtesy; never hide the real error behind another
        return ""
    return f"; registered models: {', '.join(names) or 'none (run `dvc repro` first)'}"
