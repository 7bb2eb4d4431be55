"""Logged models: logging a trained network as an MLflow pyfunc that carries its input contract
(`assay.tracking.contract`), and loading one back. (Registering versions needs no torch: store.)"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from tokenizers import Tokenizer

from assay.tracking import contract


def log_model(
    uri: str,
    run_id: str,
    net: torch.nn.Module,
    card: dict,
    example,
    scratch: Path,
    tokenizer_path: Path | None = None,
) -> str:
    """Log `net` as the MLflow model of run `run_id` in the store `uri`: a pyfunc
    (`contract.AssayModel`) holding the network (pickled whole), `assay.json` (`card`, with its
    input contract) and, for text, the tokenizer. Its predict takes raw input (`example` is
    some) and refuses what is out of contract, so `assay predict`, MLflow's loader and
    `mlflow models serve` answer alike.
    Returns the model's URI (models:/<model id>: what the registry registers)."""
    (scratch / "assay.json").write_text(json.dumps(card, indent=2))
    torch.save(net, scratch / "net.pt")
    artifacts = {"net": str(scratch / "net.pt"), "card": str(scratch / "assay.json")}
    tokenizer = None
    if tokenizer_path is not None:
        artifacts["tokenizer"] = str(tokenizer_path)
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
    out = contract.apply(card, net, example, tokenizer)
    # outputs only: MLflow's input enforcement would refuse valid raw input (see the contract)
    signature = ModelSignature(inputs=None, outputs=infer_signature(None, out).outputs)
    requirements = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    requirements += ["numpy", "lightning"] + (["tokenizers"] if tokenizer else [])
    # explicit requirements spare 6-7 s of inference
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        logged = mlflow.pyfunc.log_model(
            name="model",
            python_model=contract.AssayModel(),
            artifacts=artifacts,
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
            metadata={"assay_input": card["input"]},
        )
    return logged.model_uri


def load_model(model_uri: str, uri: str):
    """The pyfunc at `model_uri` in the store `uri` (raises TrackingError or OSError)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model(model_uri)


def card_of(model) -> dict | None:
    """An Assay pyfunc's card (assay.json); None for any other model (another flavour, or an
    older Assay's without a contract)."""
    try:
        return getattr(model.unwrap_python_model(), "card", None)
    except MlflowException:  # another flavour (mlflow.pytorch, as Assay logged before)
        return None


def load_net(model_uri: str, uri: str) -> torch.nn.Module:
    """The torch network an Assay pyfunc applies (the GAN's judge is a registered classifier)."""
    return load_model(model_uri, uri).unwrap_python_model().net
