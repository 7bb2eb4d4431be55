"""Recurrent networks: `rnn` (Elman), `lstm`, `gru`, each with layers, dropout and a bidirectional
option; the same classes do sentiment on text and forecasting on series (see models.sequence).
Gradient clipping (`train.grad_clip`) is what keeps them stable; the experiments set it."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from assay.config.architectures import RNNConfig
from assay.models.registry import register_model
from assay.models.sequence import SequenceModule, SequenceNet


class RecurrentEncoder(nn.Module):
    """(B, T, D), mask -> (B, T, H*dirs). Padded text is packed, so padding never enters a state."""

    def __init__(self, cell: str, in_dim: int, cfg: RNNConfig):
        super().__init__()
        cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = cls(
            in_dim,
            cfg.hidden_size,
            num_layers=cfg.num_layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0,
            bidirectional=cfg.bidirectional,
        )
        width = cfg.hidden_size * (2 if cfg.bidirectional else 1)
        self.norm = nn.LayerNorm(width) if cfg.layer_norm else nn.Identity()

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return self.norm(self.rnn(h)[0])
        lengths = mask.long().sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(
            h, lengths, batch_first=True, enforce_sorted=False
        )
        out, _ = nn.utils.rnn.pad_packed_sequence(
            self.rnn(packed)[0], batch_first=True, total_length=h.shape[1]
        )
        return self.norm(out)


class RecurrentModel(SequenceModule):
    Config = RNNConfig
    cell: ClassVar[str]

    def build_net(self) -> nn.Module:
        c = self.config
        encoder = RecurrentEncoder(self.cell, self.in_dim(), c)
        width = c.hidden_size * (2 if c.bidirectional else 1)
        return SequenceNet(
            self.task, c, encoder, c.embedding_dim, width, self.pool(), self.out_features
        )


@register_model("rnn")
class ElmanRNN(RecurrentModel):
    cell = "rnn"


@register_model("lstm")
class LSTM(RecurrentModel):
    cell = "lstm"


@register_model("gru")
class GRU(RecurrentModel):
    cell = "gru"
