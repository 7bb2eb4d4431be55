"""What the recurrent and Transformer families share: turning text or a series into a sequence of
vectors, pooling an encoder's outputs, and the two heads (class logits; a multi-step forecast).

An encoder is any `nn.Module` taking (B, T, D) and a padding mask (B, T) (True = real token, or
None) and returning (B, T, H). The same architecture serves sentiment (token ids in, class logits
out) and forecasting (raw feature windows in, the next `horizon` raw values out).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from assay.models.base import AssayModule, Standardize, Task


def masked_pool(h: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(B, T, H) -> (B, H) over the real steps only."""
    if how == "last" or (mask is None and how == "last"):
        if mask is None:
            return h[:, -1]
        last = mask.long().sum(1).clamp_min(1) - 1
        return h[torch.arange(len(h)), last]
    if mask is None:
        return h.mean(1) if how == "mean" else h.max(1).values
    m = mask.unsqueeze(-1)
    if how == "mean":
        return (h * m).sum(1) / m.sum(1).clamp_min(1)
    return h.masked_fill(~m, float("-inf")).max(1).values.nan_to_num(0.0)


class SequenceNet(nn.Module):
    """input -> encoder -> pool -> head, for text classification or forecasting."""

    def __init__(
        self,
        task: Task,
        cfg: Any,
        encoder: nn.Module,
        in_dim: int,
        out_dim: int,
        pool: str,
        n_out: int = 0,
    ):
        super().__init__()
        self.kind = task.kind
        self.pool = pool
        if task.kind == "text":
            self.embed = nn.Embedding(task.vocab_size, in_dim, padding_idx=task.pad_id)
            self.pad_id = task.pad_id
        else:
            self.norm = Standardize(task.mean, task.std)
            self.target_index, self.season, self.horizon = (
                task.target_index,
                task.season,
                task.horizon,
            )
            self.residual = bool(cfg.predict_residual and task.season)
            self.level_norm = cfg.level_norm
            window, features = task.in_shape
            # LSTNet's highway (Lai et al. 2018): a linear forecast from the whole window,
            # which the encoder's head corrects
            self.skip = nn.Linear(window * features, task.horizon) if cfg.linear_skip else None
        self.encoder = encoder
        self.drop = nn.Dropout(cfg.dropout)
        # the head's width: the classes or the horizon, unless the objective's (a vocabulary)
        n_out = n_out or (task.num_classes if task.kind == "text" else task.horizon)
        self.head = nn.Linear(out_dim, n_out)

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the encoder takes: (vectors, padding mask or None); a series' target less its
        level under `level_norm`, as the forecast sees it."""
        h, mask, _ = self._inputs(x)
        return h, mask

    def _inputs(self, x: torch.Tensor):
        if self.kind == "text":
            x = x.long()
            return self.embed(x), x != self.pad_id, 0.0
        h = self.norm(x.float())
        level = 0.0
        if self.level_norm:  # the target's level over the window's last day, in standard units
            t = self.target_index
            level = h[:, -(self.season or h.shape[1]) :, t].mean(1, keepdim=True)
            h = h.clone()
            h[:, :, t] -= level
        return h, None, level

    def states(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads at every step, not pooled: (B, T, H). A masked-token objective
        puts the head (as wide as the vocabulary) over the masked steps only."""
        h, mask, _ = self._inputs(x)
        return self.drop(self.encoder(h, mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask, level = self._inputs(x)
        out = self.encoder(h, mask)
        y = self.head(self.drop(masked_pool(out, mask, self.pool)))
        if self.kind == "text":
            return y  # logits (B, K)
        if self.skip is not None:
            y = y + self.skip(h.flatten(1))
        z = h[:, :, self.target_index]  # the target in standard units (less its level)
        if self.residual:  # seasonal naive: each future step = the same step a season earlier
            last = z[:, -self.season :]
            y = y + last[:, torch.arange(self.horizon, device=y.device) % self.season]
        return self.norm.inverse(y + level, self.target_index)  # (B, horizon), raw units


class SequenceModule(AssayModule):
    """Text sentiment (classification) and forecasting with one architecture."""

    default_text_pool = "max"

    def pool(self) -> str:
        if self.config.pooling != "auto":
            return self.config.pooling
        return self.default_text_pool if self.task.kind == "text" else "last"

    def in_dim(self) -> int:
        return self.config.embedding_dim if self.task.kind == "text" else self.task.in_shape[-1]
