"""Contrastive pretraining of an image model without labels: SimCLR (Chen et al. 2020).

Each training image is seen twice, through two random augmentations (a small affine move: shift,
rotation, scale; then a random erased square and a little noise). The net's output layer is the
projection: both views go through the whole net, and the NT-Xent loss pulls a view towards its twin
and away from the batch's other 2B - 2 views (under DDP: each worker's batch). The layers before
that projection are the encoder a later run starts from (`train.init_from`), so the classifier's own
head is the only fresh layer there.

No label is read while training. They are read when scoring only, two ways:
- `test/probe_acc` (the gate's metric): a logistic regression on the encoder's features of 10
  labelled training images per class, scored on test (the mean of 5 draws), beside the same
  probe on raw pixels (`test/pixels_probe_acc`): what the features are worth when labels are few.
- `test/knn_acc`: each test image classified by its 20 nearest training features (cosine; the
  usual monitor of self-supervised learning). With every label at hand even raw pixels do well
  here (MNIST: ~0.97), so it says little on its own.
Per epoch, `pos_acc` is how often a view's nearest other view is its twin.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from assay import plots
from assay.objectives.base import Objective, features, register_objective

PROJECTION = 64  # the projection's width (SimCLR's results hold from 32 up)
TEMPERATURE = 0.2
NEIGHBOURS = 20
PROBE_LABELS, PROBE_DRAWS = 10, 5


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random view of each image (B, C, H, W) in [0, 1]: an affine move (shift up to 12% of
    the side, rotation up to 15 degrees, scale 0.85-1.15), a square of a quarter of the side
    erased to the background (0) half the time, and Gaussian noise of 0.05. Drawn on the CPU
    from `generator` (None: torch's global one)."""
    b, g = x.shape[0], generator
    angle = (torch.rand(b, generator=g) * 2 - 1) * math.radians(15)
    scale = 0.85 + torch.rand(b, generator=g) * 0.3
    shift = (torch.rand(b, 2, generator=g) * 2 - 1) * 0.24  # affine_grid's units: the side is 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
    h, w = x.shape[-2:]
    side = max(1, min(h, w) // 4)
    top = torch.randint(0, h - side + 1, (b,), generator=g)
    left = torch.randint(0, w - side + 1, (b,), generator=g)
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    square = (
        (rows >= top[:, None, None])
        & (rows < (top + side)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + side)[:, None, None])
        & (torch.rand(b, generator=g) < 0.5)[:, None, None]
    )
    v = v.masked_fill(square[:, None].to(v.device), 0.0)
    noise = torch.randn(v.shape, generator=g).to(v)
    return (v + 0.05 * noise).clamp(0, 1)


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's loss over 2B projections (the first B views, then their twins in the same
    order), and the fraction of views whose most similar other view is their twin."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is not its own pair
    twin = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(sim, twin)
    hits = (sim.argmax(1) == twin).float().mean()
    return loss, hits


def knn_predict(
    query: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, k: int = NEIGHBOURS
) -> torch.Tensor:
    """The majority class among each query's k most cosine-similar bank rows."""
    bank = F.normalize(bank, dim=1)
    classes = int(labels.max()) + 1
    out = []
    for q in torch.split(F.normalize(query, dim=1), 1024):
        top = (q @ bank.T).topk(min(k, len(bank)), dim=1).indices
        votes = F.one_hot(labels[top], classes).sum(1)
        out.append(votes.argmax(1))
    return torch.cat(out)


def probe_acc(
    train: torch.Tensor, y_train: torch.Tensor, test: torch.Tensor, y: torch.Tensor
) -> float:
    """Test accuracy of logistic regressions fitted on PROBE_LABELS rows per class of `train`
    (L2-normalised), the mean over PROBE_DRAWS seeded draws."""
    from sklearn.linear_model import LogisticRegression  # ~1 s to import; only here

    train, test = F.normalize(train, dim=1).numpy(), F.normalize(test, dim=1).numpy()
    labels = y_train.numpy()
    accs = []
    for seed in range(PROBE_DRAWS):
        rng = np.random.default_rng(seed)
        rows = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:PROBE_LABELS] for c in np.unique(labels)]
        )
        fit = LogisticRegression(C=10.0, max_iter=2000).fit(train[rows], labels[rows])
        accs.append(float((fit.predict(test) == y.numpy()).mean()))
    return float(np.mean(accs))


@register_objective
class Contrastive(Objective):
    name = "contrastive"
    primary = ("test/probe_acc", "max")
    step_metric_name = "pos_acc"
    owns_step = True
    # the range of test/probe_acc over seeds 0, 1, 2 of digits-cnn_tiny-contrastive, 1 epoch
    # (bench/seed_spread.py, 2026-12-07: 0.4811, 0.4028, 0.4606)
    reproduce_tolerance = 0.08
    smoke = {"dataset": "digits", "arch": "cnn_tiny", "objective": "contrastive"}

    def out_features(self, task) -> int:
        return PROJECTION

    def step_metric(self, task):
        return MeanMetric()

    def step(self, module, batch, stage: str, generator=None) -> torch.Tensor:
        x = batch[0]  # the labels, batch[1], are never read
        z = module(torch.cat([augment(x, generator), augment(x, generator)]))
        loss, hits = nt_xent(z)
        n = x.shape[0]
        module.epoch_loss[stage + "_"].update(loss.detach(), weight=n)
        module.log_epoch(f"{stage}/loss", module.epoch_loss[stage + "_"], prog_bar=True)
        metric = module.metrics[stage + "_"]
        metric.update(hits, weight=n)
        module.log_epoch(f"{stage}/{self.step_metric_name}", metric, prog_bar=stage != "train")
        return loss

    def score(self, model, dm, out: Path, title: str, cfg, root: Path):
        x_train, y_train = dm.load_split("train")
        x, y = dm.load_split("test")
        bank = features(model.net, x_train)
        test = features(model.net, x)
        pred = knn_predict(test, bank, y_train)
        knn = float((pred == y).float().mean())
        acc = probe_acc(bank, y_train, test, y)
        pixels = probe_acc(x_train.flatten(1), y_train, x.flatten(1), y)
        g = torch.Generator().manual_seed(0)
        views = [x[:10].numpy(), augment(x[:10], g).numpy(), augment(x[:10], g).numpy()]
        plots.image_grid(views, out / "views.png", f"{title}: two views", ["image", "view", "view"])
        self._latent(test, y, out, f"{title}: probe acc {acc:.4f}", dm.task.class_names)
        # NT-Xent depends on the batch: test's, over batches of the run's own size
        losses, hits, size = [], [], cfg.train.batch_size
        model.eval()
        with torch.no_grad():
            for part in torch.split(x, size):
                if len(part) > 1:
                    z = model(torch.cat([augment(part, g), augment(part, g)]))
                    loss_part, hit_part = nt_xent(z)
                    losses.append(float(loss_part))
                    hits.append(float(hit_part))
        loss, hits = float(np.mean(losses)), float(np.mean(hits))
        metrics = {
            "test/probe_acc": acc,
            "test/pixels_probe_acc": pixels,
            "test/knn_acc": knn,
            "test/loss": loss,
            "test/pos_acc": hits,
        }
        return metrics, len(y)

    @staticmethod
    def _latent(z: torch.Tensor, y: torch.Tensor, out: Path, title: str, names) -> None:
        from sklearn.decomposition import PCA  # scikit-learn costs ~1 s to import; only here

        sub = torch.randperm(len(z), generator=torch.Generator().manual_seed(0))[:3000]
        z2 = PCA(2, random_state=0).fit_transform(z[sub].numpy())
        plots.latent_scatter(z2, y[sub].numpy(), out / "latent.png", f"{title} (PCA)", names)
