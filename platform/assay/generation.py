"""Judging generated images with Assay's own registered classifier.

The Fréchet distance here is *not* the Inception FID: it is computed in the feature space of the
classifier registered for the same data set (by default `models:/<dataset>-cnn@champion`, the
penultimate layer), with torchmetrics' `FrechetInceptionDistance` and that network as its feature
extractor. Lower is closer to the real test images. `recognised` is the share of generated images
the classifier labels with confidence >= 0.9; for a conditional GAN, `class_match` is the share it
labels as the class the generator was asked for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from assay import plots

# MLflow (~2 s to import) loads where a judge is loaded or a grid logged, not with this module:
# the objectives import it, and the architectures import the objectives, and the config schema
# the architectures, so `assay fetch` and `assay prepare` would pay for MLflow they never use.


class JudgeFeatures(nn.Module):
    """The classifier's penultimate activations: its network minus the last linear layer."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.body = net[:-1]
        self.num_features = net[-1].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Judge:
    def __init__(self, head: nn.Module, uri: str):
        self.head = head.eval()
        self.uri = uri
        net = getattr(head, "net", None)
        if not isinstance(net, nn.Sequential) or not isinstance(net[-1], nn.Linear):
            raise ValueError(
                f"{uri} is not an Assay image classifier (Sequential ending in Linear)"
            )
        self.features = JudgeFeatures(net).eval()

    @classmethod
    def load(cls, model_uri: str, cfg, root: Path) -> Judge:
        from assay import tracking

        uri = tracking.tracking_uri(cfg.tracking, root)
        tracking.ensure_store(uri)
        try:
            # the logged pyfunc (assay.tracking.contract.AssayModel) holds the net it applies
            head = tracking.load_net(model_uri, uri)
        except (tracking.TrackingError, OSError, AttributeError) as e:
            name = model_uri.removeprefix("models:/").split("@")[0].split("/")[0]
            raise FileNotFoundError(
                f"the GAN's judge {model_uri} is not in {uri} ({str(e).splitlines()[0]}): train "
                f"and register that classifier first (`dvc repro register@{name}`), or point "
                "train.models.gan.judge at another registered classifier"
            ) from None
        return cls(head, model_uri)

    def frechet(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        from torchmetrics.image.fid import FrechetInceptionDistance

        fd = FrechetInceptionDistance(feature=self.features, input_img_size=tuple(real.shape[1:]))
        with torch.no_grad():
            for part in torch.split(real, 1000):
                fd.update(part, real=True)
            for part in torch.split(fake, 1000):
                fd.update(part, real=False)
            return float(fd.compute())

    def scores(
        self, fake: torch.Tensor, classes: torch.Tensor | None, confidence: float = 0.9
    ) -> dict[str, float]:
        """`recognised` and, given the classes asked for, `class_match`."""
        with torch.no_grad():
            probs = torch.cat([self.head(p) for p in torch.split(fake, 1000)])
        top, label = probs.max(-1)
        out = {"recognised": float((top >= confidence).float().mean())}
        if classes is not None:
            out["class_match"] = float((label == classes.to(label.device)).float().mean())
        return out


class GenerationMonitor(Callback):
    """Each validation epoch: `val/fd` against the validation images, `val/recognised`, and a
    sample grid (fixed codes, so epochs compare) logged to MLflow and W&B."""

    def __init__(self, judge: Judge, n: int, seed: int):
        self.judge, self.n, self.seed = judge, n, seed

    @classmethod
    def from_config(cls, model, cfg, root: Path) -> GenerationMonitor:
        judge = Judge.load(model.config.judge.format(dataset=cfg.train.dataset), cfg, root)
        return cls(judge, model.config.eval_samples, cfg.train.seed)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        real = torch.cat([b[0] for b in trainer.datamodule.val_dataloader()])[: self.n]
        was_training = pl_module.training
        fake, classes = pl_module.generate(len(real), seed=self.seed, with_classes=True)
        pl_module.train(was_training)
        pl_module.log("val/fd", self.judge.frechet(real.cpu(), fake), prog_bar=True)
        for name, value in self.judge.scores(fake, classes).items():
            pl_module.log(f"val/{name}", value, prog_bar=name == "recognised")
        self._log_grid(trainer, fake[:64].numpy())

    @staticmethod
    def _log_grid(trainer, images) -> None:
        epoch = trainer.current_epoch
        with tempfile.TemporaryDirectory() as tmp:
            path = plots.image_grid(
                [images], Path(tmp) / f"samples_epoch{epoch:03d}.png", f"epoch {epoch}"
            )
            from assay import tracking

            tracking.log_image(trainer.loggers, path, "samples", step=trainer.global_step)
