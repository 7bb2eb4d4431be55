"""Masked-token pretraining of a text encoder without labels (BERT's objective, Devlin et al.
2019), on the training texts.

In each text, 15% of the real tokens are chosen; of those, 80% are replaced by the mask, 10% by a
random token and 10% kept, and the net predicts the original token at each chosen position from
the whole (bidirectional) context. The net's output layer reads each chosen position
(`SequenceNet.states`) and is as wide as the vocabulary; everything before it (embedding and
encoder layers) is the encoder a sentiment classifier starts from (`train.init_from`). The mask
is the tokenizer's `[UNK]`: the prepared vocabulary has no `[MASK]` of its own, and adding one
would change every prepared data set's token ids.

Scored on test with a fixed draw of positions, every one masked: masked-token accuracy (the gate's
metric), loss and perplexity, and the accuracy per band of how often the token occurs in training
(frequent tokens are easy; the rare ones show whether it learned words, not only punctuation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from assay import plots
from assay.objectives.base import Objective, Prediction, register_objective

MASK_RATE = 0.15
MASK_ID = 1  # [UNK] (assay.tokens): the mask


def mask_tokens(
    ids: torch.Tensor, vocab_size: int, pad_id: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input, targets): targets are -100 (ignored) but where a token was chosen."""
    real = ids != pad_id
    draw = torch.rand(ids.shape, generator=generator)
    chosen = (draw < MASK_RATE) & real.cpu()
    how = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(2, vocab_size, ids.shape, generator=generator)
    chosen, how, random_ids = (t.to(ids.device) for t in (chosen, how, random_ids))
    inputs = torch.where(chosen & (how < 0.8), torch.full_like(ids, MASK_ID), ids)
    inputs = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, inputs)
    targets = torch.where(chosen, ids, torch.full_like(ids, -100))
    return inputs, targets


def masked_logits(net, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The logits over the vocabulary at the chosen positions only (N, V): the head over every
    position would be (B, T, V), ~T / (0.15 x the real tokens) times the work for the same loss
    (RT: 64 positions, ~26 real tokens, ~4 chosen)."""
    return net.head(net.states(ids)[targets != -100])


def masked_loss(net, ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cross-entropy over the chosen positions, their count, and how many were right."""
    picked = masked_logits(net, ids, targets)
    wanted = targets[targets != -100]
    if not len(wanted):  # a batch of very short texts can draw no position
        zero = picked.sum() * 0.0
        return zero, 0, zero
    loss = F.cross_entropy(picked, wanted)
    return loss, len(wanted), (picked.argmax(-1) == wanted).float().sum()


class FillHead(nn.Module):
    """The logged model: token ids in, the most likely token id at every position out (B, T),
    padding included: at a text's `[UNK]` (the mask), the word it guesses there."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(self.net.states(x)).argmax(-1)


@register_objective
class MaskedTokens(Objective):
    name = "masked_tokens"
    primary = ("test/masked_acc", "max")
    step_metric_name = "masked_acc"
    owns_step = True
    # the range of test/masked_acc over seeds 0, 1, 2 of rotten_tomatoes-transformer_tiny-
    # masked_tokens, 1 epoch (bench/seed_spread.py, 2026-12-07: 0.0398, 0.0209, 0.0413)
    reproduce_tolerance = 0.021
    smoke = {
        "dataset": "rotten_tomatoes",
        "arch": "transformer_tiny",
        "objective": "masked_tokens",
    }

    def out_features(self, task) -> int:
        return task.vocab_size

    def step_metric(self, task):
        return MeanMetric()

    def step(self, module, batch, stage: str, generator=None) -> torch.Tensor:
        ids = batch[0].long()  # the labels, batch[1], are never read
        inputs, targets = mask_tokens(ids, module.task.vocab_size, module.task.pad_id, generator)
        loss, n, right = masked_loss(module.net, inputs, targets)
        if n:
            module.epoch_loss[stage + "_"].update(loss.detach(), weight=n)
            module.metrics[stage + "_"].update(right / n, weight=n)
        module.log_epoch(f"{stage}/loss", module.epoch_loss[stage + "_"], prog_bar=True)
        name = f"{stage}/{self.step_metric_name}"
        module.log_epoch(name, module.metrics[stage + "_"], prog_bar=stage != "train")
        return loss

    def head(self, net):
        return FillHead(net)

    def score(self, model, dm, out: Path, title: str, cfg, root: Path):
        x_train, _ = dm.load_split("train")
        x, _ = dm.load_split("test")
        task = dm.task
        _, targets = mask_tokens(
            x.long(), task.vocab_size, task.pad_id, torch.Generator().manual_seed(0)
        )
        # every chosen token masked: training keeps 10% as they were, which scored here would
        # count copying the input as knowing the word
        inputs = torch.where(targets != -100, MASK_ID, x.long())
        model.eval()
        with torch.no_grad():
            parts = zip(torch.split(inputs, 512), torch.split(targets, 512), strict=True)
            logits = torch.cat([masked_logits(model.net, i, t) for i, t in parts])
        keep = targets != -100
        wanted = targets[keep]
        loss = float(F.cross_entropy(logits, wanted))
        right = (logits.argmax(-1) == wanted).numpy()
        counts = np.bincount(x_train.numpy().ravel(), minlength=task.vocab_size)
        bands = [("top 100", 0, 100), ("100-1k", 100, 1000), ("1k+", 1000, task.vocab_size)]
        rank = np.empty(task.vocab_size, dtype=np.int64)
        rank[np.argsort(-counts, kind="stable")] = np.arange(task.vocab_size)
        r = rank[wanted.numpy()]
        names, accs = [], []
        for label, lo, hi in bands:
            sel = (r >= lo) & (r < hi)
            if sel.any():
                names.append(f"{label} ({int(sel.sum())})")
                accs.append(float(right[sel].mean()))
        acc = float(right.mean())
        plots.bars(
            names,
            accs,
            out / "masked_acc_by_frequency.png",
            f"{title}: masked-token accuracy {acc:.3f} by training-frequency rank",
            "masked-token accuracy",
        )
        metrics = {
            "test/masked_acc": acc,
            "test/loss": loss,
            "test/perplexity": float(np.exp(loss)),
        }
        return metrics, len(x)

    def decode(self, out, raw, card):
        ids = np.asarray(out)
        rows = [
            [t[:60], " ".join(str(int(i)) for i in row)] for t, row in zip(raw, ids, strict=True)
        ]
        return Prediction(self.name, ["text", "token_ids"], rows, ids)
