"""GAN: a DCGAN-style generator (latent code -> transposed convolutions, each resolution refined
by `g_extra` stride-1 3x3 convolutions -> image) and discriminator (strided convolutions ->
real/fake logit), trained with two optimisers by manual optimisation (non-saturating generator
loss, one-sided label smoothing). Assay judges it with its own registered classifier
(assay.generation): `val/fd` (Fréchet distance in that classifier's feature space) picks the
checkpoint. On MNIST, `g_extra: 1` cost 35% more time an epoch than 0 and gave a 35% lower FD
after 5 epochs (14.6 against 22.6), the same share of recognised digits (0.62).

`conditional: true` makes it a class-conditional GAN: the generator's code is z followed by a
one-hot class, the discriminator a projection discriminator (its real/fake logit plus the inner
product of a learned class embedding with its features). Generated batches ask for every class in
turn, so no digit is left rare, and the judge also reports whether it sees the digit asked for."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from assay.config.architectures import GANConfig
from assay.models.base import AssayModule
from assay.models.registry import register_model


class Generator(nn.Module):
    """codes (B, latent [+ classes, one-hot]) -> images (B, C, H, W) in [0, 1]; H, W divisible
    by 4."""

    def __init__(self, shape: tuple[int, int, int], cfg: GANConfig, num_classes: int = 0):
        super().__init__()
        c, h, w = shape
        self.shape, self.code_dim = shape, cfg.latent_dim + num_classes
        g = cfg.g_channels
        bn = nn.BatchNorm2d if cfg.batch_norm else lambda n: nn.Identity()
        self.fc = nn.Sequential(nn.Linear(self.code_dim, g * (h // 4) * (w // 4)), nn.ReLU())

        def extra(n: int) -> list[nn.Module]:  # refine at this resolution before upsampling
            return [
                m
                for _ in range(cfg.g_extra)
                for m in (nn.Conv2d(n, n, 3, 1, 1, bias=not cfg.batch_norm), bn(n), nn.ReLU())
            ]

        self.body = nn.Sequential(
            bn(g),
            *extra(g),
            nn.ConvTranspose2d(g, g // 2, 4, 2, 1),  # (g, h/4) -> (g/2, h/2)
            bn(g // 2),
            nn.ReLU(),
            *extra(g // 2),
            nn.ConvTranspose2d(g // 2, c, 4, 2, 1),  # -> (c, h)
            nn.Sigmoid(),
        )
        self.g = g

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, h, w = self.shape
        return self.body(self.fc(z).view(-1, self.g, h // 4, w // 4))


class Discriminator(nn.Module):
    """images (B, C, H, W) [, classes (B,)] -> real/fake logits (B,). Conditional: a projection
    discriminator (Miyato & Koyama, 2018), logit = w.h + embed(class).h; unconditional, the
    classes are ignored."""

    def __init__(self, shape: tuple[int, int, int], cfg: GANConfig, num_classes: int = 0):
        super().__init__()
        c, h, w = shape
        d = cfg.d_channels
        bn = nn.BatchNorm2d if cfg.batch_norm else lambda n: nn.Identity()
        features = 2 * d * (h // 4) * (w // 4)
        self.body = nn.Sequential(
            nn.Conv2d(c, d, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(d, 2 * d, 4, 2, 1),
            bn(2 * d),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Dropout(cfg.dropout),
        )
        self.head = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=features**-0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)
        logits = self.head(h).squeeze(-1)
        if self.embed is not None:
            if y is None:
                raise ValueError("a conditional discriminator needs the images' classes")
            logits = logits + (self.embed(y) * h).sum(-1)
        return logits


class GANNet(nn.Module):
    def __init__(self, shape, cfg: GANConfig, num_classes: int = 0):
        super().__init__()
        self.generator = Generator(shape, cfg, num_classes)
        self.discriminator = Discriminator(shape, cfg, num_classes)


@register_model("gan")
class GAN(AssayModule):
    Config = GANConfig
    monitor = ("val/fd", "min")

    def __init__(self, config, task, optim=None, objective="auto"):
        super().__init__(config, task, optim, objective)
        self.automatic_optimization = False  # two players, two optimisers, one loop

    def build_net(self) -> nn.Module:
        shape = tuple(self.task.in_shape)
        if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
            raise ValueError(f"gan needs images (C, H, W) with H, W divisible by 4; got {shape}")
        if self.config.conditional and self.task.num_classes < 2:
            raise ValueError(
                "gan: conditional: true needs a labelled data set (task.num_classes >= 2); "
                f"this one has {self.task.num_classes} classes"
            )
        return GANNet(shape, self.config, self.num_classes)

    @property
    def num_classes(self) -> int:
        """Classes in the generator's code: the data's when conditional, else 0."""
        return self.task.num_classes if self.config.conditional else 0

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net.generator(codes)

    def _metric(self):
        return None

    def codes(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The generator's input: z, then (conditional) the one-hot class."""
        if not self.num_classes:
            return z
        return torch.cat([z, F.one_hot(y, self.num_classes).to(z.dtype)], -1)

    def sample_codes(
        self, n: int, seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n codes and (conditional) their classes, cycling 0, 1, ... so classes are balanced."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, self.config.latent_dim, generator=g)
        y = torch.arange(n) % self.num_classes if self.num_classes else None
        return self.codes(z, y), y

    def card(self) -> dict:
        return {"code": {"latent_dim": self.config.latent_dim, "classes": self.num_classes}}

    def generate(
        self, n: int, seed: int = 0, with_classes: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """n images from fixed codes (`seed`); `with_classes`: also the classes asked for
        (None when unconditional)."""
        codes, y = self.sample_codes(n, seed)
        was = self.training
        self.eval()
        with torch.no_grad():
            out = torch.cat([self(part.to(self.device)) for part in torch.split(codes, 1000)])
        self.train(was)
        return (out.cpu(), y) if with_classes else out.cpu()

    def _fake(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """n generated images from fresh codes, and (conditional) the random classes asked for."""
        z = torch.randn(n, self.config.latent_dim, device=self.device)
        y = torch.randint(self.num_classes, (n,), device=self.device) if self.num_classes else None
        return self(self.codes(z, y)), y

    def _d_loss(
        self,
        real: torch.Tensor,
        fake: torch.Tensor,
        y_real: torch.Tensor | None = None,
        y_fake: torch.Tensor | None = None,
    ) -> torch.Tensor:
        d = self.net.discriminator
        real_logits, fake_logits = d(real, y_real), d(fake, y_fake)
        smooth = 1.0 - self.config.label_smoothing
        return F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, smooth)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))

    def training_step(self, batch, batch_idx):
        real, y_real = batch  # an unconditional discriminator ignores the classes
        opt_d, opt_g = self.optimizers()
        fake, y_fake = self._fake(len(real))
        # discriminator: real -> (smoothed) 1, fake -> 0
        d_loss = self._d_loss(real, fake.detach(), y_real, y_fake)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        self._clip(opt_d)
        opt_d.step()
        # generator: make the discriminator say 1 (the non-saturating loss)
        logits = self.net.discriminator(fake, y_fake)
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if self.optim.l1 > 0:
            g_loss = g_loss + self.optim.l1 * self._l1()
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        self._clip(opt_g)
        opt_g.step()
        self.log(
            "train/d_loss", d_loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log(
            "train/g_loss", g_loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True
        )

    def on_train_epoch_end(self) -> None:
        for sched in self.lr_schedulers() or []:
            sched.step()

    def _clip(self, opt) -> None:
        if self.optim.grad_clip > 0:
            self.clip_gradients(
                opt, gradient_clip_val=self.optim.grad_clip, gradient_clip_algorithm="norm"
            )

    def validation_step(self, batch, batch_idx):
        real, y_real = batch
        fake, y_fake = self._fake(len(real))
        self.log(
            "val/d_loss", self._d_loss(real, fake, y_real, y_fake), on_epoch=True, sync_dist=True
        )

    def test_step(self, batch, batch_idx):
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self):
        if self.optim.scheduler == "onecycle":
            raise ValueError("gan: scheduler onecycle steps per batch; use none, step or cosine")
        d_optim = self.optim.model_copy(update={"lr": self.optim.lr * self.config.d_lr_scale})
        out = []
        for params, cfg in (
            (self.net.discriminator.parameters(), d_optim),
            (self.net.generator.parameters(), self.optim),
        ):
            spec = self.optimizer_and_schedule(params, cfg)
            for group in spec["optimizer"].param_groups:
                if "betas" in group:
                    group["betas"] = (self.config.beta1, group["betas"][1])
            out.append(spec)
        return out

    def inference_model(self) -> nn.Module:
        # codes (B, latent_dim [+ one-hot class]) -> images (B, C, H, W)
        return self.net.generator.eval()

    def inference_example(self, example: torch.Tensor) -> torch.Tensor:
        return self.sample_codes(len(example), seed=0)[0]
