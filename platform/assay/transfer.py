"""Transfer from the registry: `train.init_from` starts a new model from a logged one's encoder,
and `train.freeze` keeps that encoder fixed (a linear probe) until `train.unfreeze_epoch`.

The encoder is every layer of the network but its output head, the network's last linear layer
(a CNN's or MLP's classifier, a sequence model's `head`), which the new model keeps freshly
initialised: the new task may have other classes. Before any compute, the source is checked
against the new model: the same architecture family, every encoder layer present with the same
shape, and for text the same tokenizer vocabulary (token ids mean the same words); a mismatch is
an error naming the layer. The run records its parent: tags `assay.init_from` (the URI),
`assay.init_from.run_id` and `assay.init_from.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from assay import tracking
from assay.errors import UserError
from assay.objectives.base import output_layer


class TransferError(UserError, ValueError):
    pass


@dataclass
class Source:
    uri: str
    run_id: str | None
    family: str | None
    state: dict[str, torch.Tensor]  # the source network's weights (its head unwrapped)
    vocab: dict[str, int] | None  # a text model's tokenizer vocabulary


def head_name(net: nn.Module) -> str:
    """The output head: the last linear layer, which must be a direct part of the network."""
    found = output_layer(net)
    if found is None:
        raise TransferError(
            f"{type(net).__name__} has no output layer of its own to keep apart from its "
            "encoder: init_from takes classifiers, forecasters and recommenders with a last "
            "linear layer"
        )
    return found[0]


def encoder_state(net: nn.Module) -> dict[str, torch.Tensor]:
    head = head_name(net) + "."
    return {k: v for k, v in net.state_dict().items() if not k.startswith(head)}


def load_source(uri: str, tracking_uri: str) -> Source:
    """The logged model at `uri`: its weights, family and (text) vocabulary."""
    try:
        model = tracking.load_model(uri, tracking_uri)
    except (tracking.TrackingError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TransferError(f"train.init_from: cannot load {uri}: {first}") from None
    python_model = model.unwrap_python_model()
    net = python_model.net
    state = net.state_dict()
    if state and all(k.startswith("net.") for k in state):  # the objective's head around it
        state = {k.removeprefix("net."): v for k, v in state.items()}
    run_id = _run_id(uri, tracking_uri)
    family = None
    if run_id:
        run = tracking.read_run(tracking.ensure_store(tracking_uri), run_id)
        family = (run or {}).get("tags", {}).get("family")
    tok = python_model.tokenizer
    return Source(uri, run_id, family, state, tok.get_vocab() if tok is not None else None)


def _run_id(uri: str, tracking_uri: str) -> str | None:
    if uri.startswith("runs:/"):
        return uri.removeprefix("runs:/").split("/", 1)[0]
    try:
        return tracking.resolve_model(tracking.ensure_store(tracking_uri), uri)[1]
    except (tracking.TrackingError, ValueError):
        return None


def check(source: Source, net: nn.Module, family: str, tokenizer_path: Path | None) -> list[str]:
    """Refuse a source that does not fit `net` (naming the layer); returns the layers it gives."""
    where = f"train.init_from {source.uri}"
    if source.family and source.family != family:
        raise TransferError(
            f"{where} is a {source.family} model; this run trains a {family}: init_from takes a "
            "model of the same architecture family"
        )
    wanted = encoder_state(net)
    for name, tensor in wanted.items():
        if name not in source.state:
            raise TransferError(
                f"{where} has no layer {name!r}, which this {family} has: the architectures' "
                "settings differ (layers, pooling, options)"
            )
        if source.state[name].shape != tensor.shape:
            raise TransferError(
                f"{where}: layer {name!r} is {tuple(source.state[name].shape)} there and "
                f"{tuple(tensor.shape)} here: the architectures' settings differ (widths, "
                "kernel sizes, vocabulary size)"
            )
    if tokenizer_path is not None:
        from tokenizers import Tokenizer

        ours = Tokenizer.from_file(str(tokenizer_path)).get_vocab()
        if source.vocab is None or source.vocab != ours:
            differ = len(set((source.vocab or {}).items()) ^ set(ours.items()))
            raise TransferError(
                f"{where} reads text with another vocabulary ({differ} token ids differ from "
                f"{tokenizer_path}): its embeddings would mean other words here. Prepare both "
                "on the same tokenizer"
            )
    return sorted(wanted)


def load_encoder(source: Source, net: nn.Module, family: str, tokenizer_path) -> list[str]:
    """Copy the source's encoder into `net` (checked first); its head stays as initialised."""
    layers = check(source, net, family, tokenizer_path)
    net.load_state_dict({k: source.state[k] for k in layers}, strict=False)
    return layers


class FreezeEncoder(BaseFinetuning):
    """Lightning's fine-tuning callback: the encoder frozen before training (batch norm too),
    and unfrozen, into the optimiser, at `unfreeze_epoch` (None: never)."""

    def __init__(self, unfreeze_epoch: int | None) -> None:
        super().__init__()
        self.unfreeze_epoch = unfreeze_epoch

    @staticmethod
    def encoder(pl_module) -> list[nn.Module]:
        head = head_name(pl_module.net)
        return [m for name, m in pl_module.net.named_children() if name != head]

    def freeze_before_training(self, pl_module) -> None:
        self.freeze(self.encoder(pl_module), train_bn=False)

    def finetune_function(self, pl_module, current_epoch: int, optimizer) -> None:
        if current_epoch == self.unfreeze_epoch:
            self.unfreeze_and_add_param_group(self.encoder(pl_module), optimizer, train_bn=True)
