"""Autoencoders: `autoencoder`, `denoising_autoencoder` (trained to undo input noise) and `vae`
(variational, with a beta-weighted KL term). On images the objective is reconstruction (and a
low-dimensional embedding); on tabular rows it is anomaly detection: trained on normal rows only,
a row's reconstruction error is its anomaly score. Dense encoder/decoder over flattened inputs."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from assay.config.architectures import AEConfig
from assay.models.base import AssayModule, Standardize, norm_act_drop
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
    tabular rows are standardised inside (training-split statistics) and decoded back."""

    def __init__(self, in_shape: tuple[int, ...], cfg: AEConfig, variational: bool, task):
        super().__init__()
        self.in_shape = tuple(in_shape)
        n = math.prod(in_shape)
        self.image = task.kind == "image"
        self.norm = None if self.image else Standardize(task.mean, task.std)
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
        stats = self.to_latent(self.encoder(self.standard(x)))
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


class Autoencoder(AssayModule):
    Config = AEConfig
    variational: ClassVar[bool] = False
    denoising: ClassVar[bool] = False

    def build_net(self) -> nn.Module:
        return AutoencoderNet(self.task.in_shape, self.config, self.variational, self.task)

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
        target = self.net.standard(x)
        inp = x
        if self.denoising and stage == "train":
            noise = torch.randn_like(target) * self.config.noise_std
            inp = target + noise if self.net.norm is None else self.net.norm.inverse(target + noise)
            if self.net.norm is None:
                inp = inp.clamp(0, 1)
        mu, logvar = self.net.encode(inp)
        z = mu
        if self.variational and stage == "train":
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = self.net.decode_standard(z)
        mse = F.mse_loss(recon, target)
        loss = mse
        if self.variational:
            kl = -0.5 * torch.mean(torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=-1))
            # The KL of a whole example against the summed reconstruction error of its features:
            # the ELBO's balance, expressed per feature so `beta` reads the same on any data size.
            loss = mse + self.config.beta * kl / target[0].numel()
            self.log(f"{stage}/kl", kl, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/mse", mse, on_step=False, on_epoch=True, sync_dist=True)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if stage == "train" and self.optim.l1 > 0:
            loss = loss + self.optim.l1 * self._l1()
        return loss

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
