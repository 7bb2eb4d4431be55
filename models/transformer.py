"""Transformer encoder: token embedding (text) or a linear projection (series), sinusoidal
positional encoding, `num_layers` pre-norm (or post-norm) encoder layers with `heads` heads, then
the shared pooling and heads of models.sequence. `attention_maps` returns the last layer's
self-attention (mean of heads) for the evaluation's attention-map PNG."""

from __future__ import annotations

import math

import torch
from torch import nn

from assay.config.architectures import TransformerConfig
from assay.models.registry import register_model
from assay.models.sequence import SequenceModule, SequenceNet


class PositionalEncoding(nn.Module):
    """The fixed sinusoids of Vaswani et al. (2017), added to the inputs."""

    def __init__(self, d_model: int, max_len: int = 4096):
        super().__init__()
        pos = torch.arange(max_len)[:, None]
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10_000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]


class TransformerEncoder(nn.Module):
    def __init__(self, in_dim: int, cfg: TransformerConfig):
        super().__init__()
        self.proj = nn.Linear(in_dim, cfg.d_model) if in_dim != cfg.d_model else nn.Identity()
        self.pos = PositionalEncoding(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.heads,
            cfg.ff_dim,
            cfg.dropout,
            activation=cfg.activation if cfg.activation in ("relu", "gelu") else "gelu",
            batch_first=True,
            norm_first=cfg.pre_norm,
        )
        self.layers = nn.TransformerEncoder(
            layer,
            cfg.num_layers,
            enable_nested_tensor=False,
            norm=nn.LayerNorm(cfg.d_model) if cfg.pre_norm else None,
        )
        self.pre_norm = cfg.pre_norm

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop(self.pos(self.proj(h)))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        pad = None if mask is None else ~mask
        return self.layers(self.embed(h), src_key_padding_mask=pad)

    def attention(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The last layer's attention weights (B, T, T), averaged over heads."""
        pad = None if mask is None else ~mask
        x = self.embed(h)
        *first, last = self.layers.layers
        for layer in first:
            x = layer(x, src_key_padding_mask=pad)
        q = last.norm1(x) if self.pre_norm else x
        _, w = last.self_attn(
            q, q, q, key_padding_mask=pad, need_weights=True, average_attn_weights=True
        )
        return w


@register_model("transformer")
class Transformer(SequenceModule):
    Config = TransformerConfig
    default_text_pool = "mean"

    def build_net(self) -> nn.Module:
        encoder = TransformerEncoder(self.in_dim(), self.config)
        return SequenceNet(
            self.task,
            self.config,
            encoder,
            self.config.embedding_dim,
            self.config.d_model,
            self.pool(),
            self.out_features,
        )

    def attention_maps(self, x: torch.Tensor) -> torch.Tensor:
        was = self.training
        self.eval()
        with torch.no_grad():
            h, mask = self.net.inputs(x)
            w = self.net.encoder.attention(h, mask)
        self.train(was)
        return w
