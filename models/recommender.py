"""Recommenders on explicit ratings: `matrix_factorization` (biased MF: global mean + user and
item biases + a dot product of embeddings) and `ncf` (neural collaborative filtering, NeuMF: a
generalised MF branch and an MLP branch over the two embeddings, fused by a linear layer).
Both predict a rating for (user, item) ids; the objective is rating (MSE), evaluated with RMSE
and, for ranking, HR@10 / NDCG@10 against sampled unrated items.

Both add, by default, a popularity bias: a learned offset per log2 bin of an item's rating count
in the training split. Rarely rated films are rated lower: on MovieLens-100K's per-user time
split, test ratings of films with under 20 training ratings average 2.8 stars, against 3.8 for
films with 100 or more. A rarely rated film's own bias is shrunk to zero by the L2, so without
this prior the model rates it like an average film. It also follows the drift of a time split:
each user's later ratings are of rarer films.

Both add, where the data lists item attributes (MovieLens: genres and release period), an
attribute bias: a learned offset per attribute, summed over an item's attributes (`attribute_bias`,
on by default). A rarely rated film's genres and age say something about it that its own few
ratings cannot.

Both can add a recent-user bias (`recent_user_bias`, a share; off by default): a second offset per
user, fitted on the latest share of each user's training ratings only and applied to every
prediction, which is about now. Users drift (on MovieLens, each user's ratings fall over their
history), and their latest ratings say most about their next ones: a step version of the user
bias drift of Koren's timeSVD++, in the user's own order of ratings rather than in days, since
most MovieLens users rated everything within an hour. It reads the batch's `position`
(`assay.data.ratings`): k/n for a user's k-th of n training ratings, 1 for any other."""

from __future__ import annotations

import torch
from torch import nn

from assay.config.architectures import MFConfig, NCFConfig
from assay.models.base import AssayModule, Task, norm_act_drop
from assay.models.registry import register_model

POPULARITY_BINS = 16  # floor(log2(count + 1)): counts 0 | 1-2 | 3-6 | 7-14 | ... | 32767+


class PopularityBias(nn.Module):
    """A learned rating offset shared by the items of one log2 bin of training-split rating
    counts (Task.item_counts; bins are a buffer, so a logged model keeps them). Not penalised:
    16 numbers, each fitted from many ratings."""

    def __init__(self, counts: list[int], n_items: int):
        super().__init__()
        c = torch.tensor(counts, dtype=torch.float32) if counts else torch.zeros(n_items)
        if len(c) != n_items:
            raise ValueError(f"item_counts has {len(c)} entries for {n_items} items")
        bins = torch.log2(c + 1).floor().long().clamp(max=POPULARITY_BINS - 1)
        self.register_buffer("bins", bins)
        self.bias = nn.Embedding(POPULARITY_BINS, 1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.bias(self.bins[items]).squeeze(-1)


class RecentUserBias(nn.Module):
    """A per-user offset that only the latest `share` of each user's training ratings fit
    (position > 1 - share) and that every other prediction (position 1, or none) gets."""

    def __init__(self, n_users: int, share: float):
        super().__init__()
        self.share = share
        self.bias = nn.Embedding(n_users, 1)
        nn.init.zeros_(self.bias.weight)

    def forward(self, users: torch.Tensor, position: torch.Tensor | None) -> torch.Tensor:
        b = self.bias(users).squeeze(-1)
        return b if position is None else b * (position > 1 - self.share)


class AttributeBias(nn.Module):
    """A learned offset per item attribute (Task.item_attributes), summed over each item's. The
    attributes are a multi-hot buffer, so a logged model keeps them. Not penalised: a few dozen
    numbers, each fitted from the ratings of many items."""

    def __init__(self, attributes: list[list[int]], n_attributes: int, n_items: int):
        super().__init__()
        if len(attributes) != n_items:
            raise ValueError(f"item_attributes has {len(attributes)} entries for {n_items} items")
        hot = torch.zeros(n_items, n_attributes)
        for item, indices in enumerate(attributes):
            hot[item, indices] = 1.0
        self.register_buffer("attributes", hot)
        self.weight = nn.Linear(n_attributes, 1, bias=False)
        nn.init.zeros_(self.weight.weight)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return self.weight(self.attributes[items]).squeeze(-1)


class Offsets(nn.Module):
    """The optional biases both nets add: popularity and attributes (per item), recent (per
    user). Each is None when off (or, for attributes, when the data lists none)."""

    def __init__(self, task: Task, cfg: MFConfig | NCFConfig):
        super().__init__()
        n_users, n_items = task.n_users, task.n_items
        self.popularity = PopularityBias(task.item_counts, n_items) if cfg.popularity_bias else None
        self.attributes = (
            AttributeBias(task.item_attributes, task.n_item_attributes, n_items)
            if cfg.attribute_bias and task.n_item_attributes
            else None
        )
        self.recent = (
            RecentUserBias(n_users, cfg.recent_user_bias) if cfg.recent_user_bias > 0 else None
        )

    def penalised(self, users: torch.Tensor) -> list[torch.Tensor]:
        """The rows the batch's L2 covers: the recent bias, a per-user parameter like the others."""
        return [self.recent.bias(users)] if self.recent is not None else []

    def forward(self, users, items, position) -> torch.Tensor | float:
        out: torch.Tensor | float = 0.0
        if self.popularity is not None:
            out = out + self.popularity(items)
        if self.attributes is not None:
            out = out + self.attributes(items)
        if self.recent is not None:
            out = out + self.recent(users, position)
        return out


class MFNet(nn.Module):
    def __init__(self, task: Task, cfg: MFConfig):
        super().__init__()
        n_users, n_items = task.n_users, task.n_items
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
        self.register_buffer("mean", torch.tensor(task.mean[0] if task.mean else 0.0))
        self.offsets = Offsets(task, cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = [self.user(users), self.item(items), self.user_bias(users), self.item_bias(items)]
        return sum((p**2).sum(-1) for p in [*parts, *self.offsets.penalised(users)]).mean()

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        dot = (self.drop(self.user(users)) * self.drop(self.item(items))).sum(-1)
        rating = (
            self.mean + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1) + dot
        )
        return rating + self.offsets(users, items, position)


class NCFNet(nn.Module):
    def __init__(self, task: Task, cfg: NCFConfig):
        super().__init__()
        n_users, n_items = task.n_users, task.n_items
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
        self.register_buffer("mean", torch.tensor(task.mean[0] if task.mean else 0.0))
        self.offsets = Offsets(task, cfg)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = [
            self.gmf_user(users),
            self.gmf_item(items),
            self.mlp_user(users),
            self.mlp_item(items),
        ]
        return sum((p**2).sum(-1) for p in [*parts, *self.offsets.penalised(users)]).mean()

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, position: torch.Tensor | None = None
    ) -> torch.Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], -1))
        rating = self.mean + self.out(torch.cat([gmf, mlp], -1)).squeeze(-1)
        return rating + self.offsets(users, items, position)


class Recommender(AssayModule):
    def training_step(self, batch, batch_idx):
        # The classic regularised MF objective: L2 on the rows a batch touches, not on all of
        # them (weight decay would shrink every user each step, rated or not).
        loss = self._step(batch, "train")
        if self.config.reg > 0:
            users, items = batch[0], batch[1]  # then position, rating
            loss = loss + self.config.reg * self.net.penalty(users, items)
        return loss


@register_model("matrix_factorization")
class MatrixFactorization(Recommender):
    Config = MFConfig

    def build_net(self) -> nn.Module:
        return MFNet(self.task, self.config)


@register_model("ncf")
class NCF(Recommender):
    Config = NCFConfig

    def build_net(self) -> nn.Module:
        return NCFNet(self.task, self.config)
