"""Recommenders on explicit ratings: `matrix_factorization` (biased MF: global mean + user and
item biases + a dot product of embeddings) and `ncf` (neural collaborative filtering, NeuMF: a
generalised MF branch and an MLP branch over the two embeddings, fused by a linear layer).
Both predict a rating for (user, item) ids; the objective is rating (MSE), evaluated with RMSE
and, for ranking, HR@10 / NDCG@10 against sampled unrated items."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.base import Activation, AssayModule, StrictModel, norm_act_drop
from models.registry import register_model


class MFConfig(StrictModel):
    embedding_dim: int = Field(64, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0, lt=1, description="on the embeddings")
    biases: bool = True
    reg: float = Field(0.05, ge=0, description="L2 on the batch's embeddings and biases")


class MFNet(nn.Module):
    def __init__(self, n_users: int, n_items: int, mean: float, cfg: MFConfig):
        super().__init__()
        self.user, self.item = (
            nn.Embedding(n_users, cfg.embedding_dim),
            nn.Embedding(n_items, cfg.embedding_dim),
        )
        for e in (self.user, self.item):
            nn.init.normal_(e.weight, std=0.05)
        self.user_bias, self.item_bias = nn.Embedding(n_users, 1), nn.Embedding(n_items, 1)
        for b in (self.user_bias, self.item_bias):
            nn.init.zeros_(b.weight)
            b.weight.requires_grad_(cfg.biases)
        self.register_buffer("mean", torch.tensor(mean))
        self.drop = nn.Dropout(cfg.dropout)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = (self.user(users), self.item(items), self.user_bias(users), self.item_bias(items))
        return sum((p**2).sum(-1) for p in parts).mean()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.drop(self.user(users)) * self.drop(self.item(items))).sum(-1)
        return (
            self.mean + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1) + dot
        )


class NCFConfig(StrictModel):
    embedding_dim: int = Field(32, ge=1, le=4096, description="per branch")
    hidden_sizes: list[int] = Field(default=[64, 32, 16], min_length=1)
    activation: Activation = "relu"
    dropout: float = Field(0.2, ge=0, lt=1)
    batch_norm: bool = False
    reg: float = Field(0.01, ge=0, description="L2 on the batch's embeddings")


class NCFNet(nn.Module):
    def __init__(self, n_users: int, n_items: int, mean: float, cfg: NCFConfig):
        super().__init__()
        d = cfg.embedding_dim
        self.gmf_user, self.gmf_item = nn.Embedding(n_users, d), nn.Embedding(n_items, d)
        self.mlp_user, self.mlp_item = nn.Embedding(n_users, d), nn.Embedding(n_items, d)
        for e in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(e.weight, std=0.05)
        layers: list[nn.Module] = []
        width = 2 * d
        for h in cfg.hidden_sizes:
            layers += [nn.Linear(width, h), *norm_act_drop(h, cfg, conv=False)]
            width = h
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(d + width, 1)
        self.register_buffer("mean", torch.tensor(mean))

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = (
            self.gmf_user(users),
            self.gmf_item(items),
            self.mlp_user(users),
            self.mlp_item(items),
        )
        return sum((p**2).sum(-1) for p in parts).mean()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], -1))
        return self.mean + self.out(torch.cat([gmf, mlp], -1)).squeeze(-1)


class Recommender(AssayModule):
    OBJECTIVES = {"ratings": "rating"}

    def training_step(self, batch, batch_idx):
        # The classic regularised MF objective: L2 on the rows a batch touches, not on all of
        # them (weight decay would shrink every user each step, rated or not).
        loss = self._step(batch, "train")
        if self.config.reg > 0:
            users, items, _ = batch
            loss = loss + self.config.reg * self.net.penalty(users, items)
        return loss

    def net_args(self) -> tuple[int, int, float]:
        t = self.task
        return t.n_users, t.n_items, t.mean[0] if t.mean else 0.0


@register_model("matrix_factorization", tiny={"embedding_dim": 4})
class MatrixFactorization(Recommender):
    Config = MFConfig

    def build_net(self) -> nn.Module:
        return MFNet(*self.net_args(), self.config)


@register_model("ncf", tiny={"embedding_dim": 4, "hidden_sizes": [8]})
class NCF(Recommender):
    Config = NCFConfig

    def build_net(self) -> nn.Module:
        return NCFNet(*self.net_args(), self.config)
