"""Autoencoders: `autoencoder`, `denoising_autoencoder` (trained to undo input noise) and `vae`
(variational, with a beta-weighted KL term). On images the objective is reconstruction (and a
low-dimensional embedding); on tabular rows it is anomaly detection: trained on normal rows only,
a row's reconstruction error is its anomaly score. Dense encoder/decoder over flattened inputs.
Tabular rows are standardised inside the net, or mapped to a normal through each feature's
training quantiles (`scaling: quantile`); `ensemble: N` trains N of them side by side and scores
a row by their mean."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from assay.config.architectures import AEConfig
from assay.models.base import AssayModule, QuantileNormal, Standardize, norm_act_drop
from assay.models.registry import register_model

# Logged anomaly models pickled this from here; the anomaly objective owns it now.
from assay.objectives.anomaly import ScoreHead as AnomalyScorer  # noqa: F401


def _mlp(sizes: list[int], cfg: AEConfig) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), *norm_act_drop(b, cfg, conv=False)]
    return layers


class AutoencoderNet(nn.Module):
    """x (B, *in_shape) raw -> reconstruction in raw units. Images in [0, 1] go through a sigmoid;
    tabular rows are scaled inside (training-split statistics, `cfg.scaling`) and decoded back."""

    def __init__(self, in_shape: tuple[int, ...], cfg: AEConfig, variational: bool, task):
        super().__init__()
        self.in_shape = tuple(in_shape)
        n = math.prod(in_shape)
        self.image = task.kind == "image"
        self.norm = None if self.image else _scaler(cfg, task)
        self.encoder = nn.Sequential(nn.Flatten(), *_mlp([n, *cfg.hidden_sizes], cfg))
        width = cfg.hidden_sizes[-1]
        self.to_latent = nn.Linear(width, cfg.latent_dim * (2 if variational else 1))
        self.variational = variational
        dec = [cfg.latent_dim, *reversed(cfg.hidden_sizes)]
        self.decoder = nn.Sequential(*_mlp(dec, cfg), nn.Linear(dec[-1], n))

    def standard(self, x: torch.Tensor) -> torch.Tensor:
        """The space the loss lives in: pixels as they are, tabular rows standardised."""
        return x if self.norm is None else self.norm(x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode_standard(self.standard(x))

    def encode_standard(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        stats = self.to_latent(self.encoder(z))
        if not self.variational:
            return stats, None
        mu, logvar = stats.chunk(2, dim=-1)
        return mu, logvar.clamp(-10, 10)

    def decode_standard(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z).view(-1, *self.in_shape)
        return torch.sigmoid(out) if self.image else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(x)
        out = self.decode_standard(mu)
        return out if self.norm is None else self.norm.inverse(out)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score: mean squared reconstruction error per example, in standard units."""
        mu, _ = self.encode(x)
        err = (self.decode_standard(mu) - self.standard(x)) ** 2
        return err.flatten(1).mean(1)


def _scaler(cfg: AEConfig, task) -> nn.Module:
    if cfg.scaling == "standard":
        return Standardize(task.mean, task.std)
    if not task.quantiles:
        raise ValueError(
            "autoencoder scaling: quantile needs each feature's training quantiles, which this "
            "data set's meta.json lacks: prepare it again (dvc repro prepare), or use "
            "scaling: standard"
        )
    return QuantileNormal(task.quantiles)


class AutoencoderEnsemble(nn.Module):
    """`ensemble` autoencoders, independently initialised, trained side by side on the same
    batches: a row's anomaly score and its reconstruction are their mean (a deep ensemble: one
    net's score depends on its initialisation). Encodings are the first member's."""

    def __init__(self, members: list[AutoencoderNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.members[0].encode(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.score(x) for m in self.members]).mean(0)


class Autoencoder(AssayModule):
    Config = AEConfig
    variational: ClassVar[bool] = False
    denoising: ClassVar[bool] = False

    def build_net(self) -> nn.Module:
        cfg = self.config
        if cfg.scaling != "standard" and self.task.kind != "tabular":
            raise ValueError(
                f"autoencoder scaling: {cfg.scaling} is for tabular rows; {self.task.kind} "
                "inputs are used as they are: leave scaling at standard"
            )
        nets = [
            AutoencoderNet(self.task.in_shape, cfg, self.variational, self.task)
            for _ in range(cfg.ensemble)
        ]
        return nets[0] if cfg.ensemble == 1 else AutoencoderEnsemble(nets)

    def members(self) -> list[AutoencoderNet]:
        return list(self.net.members) if isinstance(self.net, AutoencoderEnsemble) else [self.net]

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        if self.objective.name == "anomaly" and stage != "train":
            if stage + "_" in self.metrics:  # how well the error separates anomalies, per epoch
                self.metrics[stage + "_"](self.net.score(x), y)
                self.log(
                    f"{stage}/roc_auc",
                    self.metrics[stage + "_"],
                    on_step=False,
                    on_epoch=True,
                    prog_bar=True,
                )
            x = x[y == 0]  # the loss (and early stopping) on normal rows only
            if len(x) == 0:
                return torch.zeros((), device=self.device)
        # each member's loss on the same batch; their mean is the ensemble's (one: the net's)
        parts = [self._member_loss(net, x, stage) for net in self.members()]
        mse = torch.stack([p[0] for p in parts]).mean()
        loss = torch.stack([p[1] for p in parts]).mean()
        if self.variational:
            kl = torch.stack([k for _, _, k in parts]).mean()
            self.log(f"{stage}/kl", kl, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/mse", mse, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if stage == "train" and self.optim.l1 > 0:
            loss = loss + self.optim.l1 * self._l1()
        return loss

    def _member_loss(self, net: AutoencoderNet, x: torch.Tensor, stage: str):
        """One autoencoder's (mse, loss, kl or None) on rows `x`, in the net's standard space."""
        target = net.standard(x)
        inp = target
        if self.denoising and stage == "train":
            inp = target + torch.randn_like(target) * self.config.noise_std
            if net.norm is None:
                inp = inp.clamp(0, 1)
        mu, logvar = net.encode_standard(inp)
        z = mu
        if self.variational and stage == "train":
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        mse = F.mse_loss(net.decode_standard(z), target)
        if not self.variational:
            return mse, mse, None
        kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=-1))
        # The KL of a whole example against the summed reconstruction error of its features:
        # the ELBO's balance, expressed per feature so `beta` reads the same on any data size.
        return mse, mse + self.config.beta * kl / target[0].numel(), kl

    # What evaluation and `assay predict` use.
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.encode(x)[0]

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.score(x)


@register_model("autoencoder")
class PlainAutoencoder(Autoencoder):
    pass


@register_model("denoising_autoencoder")
class DenoisingAutoencoder(Autoencoder):
    denoising = True


@register_model("vae")
class VAE(Autoencoder):
    variational = True
