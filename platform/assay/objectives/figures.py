"""Figures more than one objective draws: attention maps (classification and forecast by a
Transformer), the latent space (reconstruction and anomaly by an autoencoder), and a classifier's
Integrated Gradients over a few test inputs (what `assay explain` draws for a user's)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer

from assay import plots
from assay.objectives import attribution
from assay.objectives.base import batched


def attention_png(model, x: torch.Tensor, dm, out: Path, title: str) -> None:
    """The last layer's attention, mean of heads, for a few test inputs (text: its tokens)."""
    if not hasattr(model, "attention_maps"):
        return
    with torch.no_grad():
        maps = model.attention_maps(x).numpy()  # (B, T, T)
    ticks: list[list[str]] = []
    panels = []
    if dm.meta["kind"] == "text":
        tok = Tokenizer.from_file(str(dm.tokenizer_path))
        for ids, m in zip(x.numpy(), maps, strict=True):
            n = max(1, int((ids != 0).sum()))
            ticks.append([tok.id_to_token(int(i)) for i in ids[:n]])
            panels.append(m[:n, :n])
    else:
        panels, ticks = list(maps), [[] for _ in maps]
    plots.attention(panels, ticks, out / "attention.png", f"{title}: last layer, mean of heads")


def latent_png(model, x, labels, out: Path, title: str, names=None) -> None:
    """The latent codes of `x` in 2-D (PCA when wider), coloured by `labels`."""
    from sklearn.decomposition import PCA  # scikit-learn costs ~1 s to import; only here

    z = batched(model.encode, x).numpy()
    if z.shape[1] > 2:
        z = PCA(2, random_state=0).fit_transform(z)
        title += " (PCA of the latent codes)"
    plots.latent_scatter(z, labels, out / "latent.png", title, names)


def explain_png(model, x: torch.Tensor, dm, out: Path, title: str, n: int = 4) -> None:
    """Integrated Gradients (and saliency) for the first `n` test inputs: explain.png, for text
    also explain.html, and attributions.npz."""
    kind = "text" if dm.meta["kind"] == "text" else "pixels"
    x = x[:n]
    a = attribution.attribute(model, x, kind)
    tokens = None
    if kind == "text":
        tok = Tokenizer.from_file(str(dm.tokenizer_path))
        pad = dm.task.pad_id
        tokens = [[tok.id_to_token(int(i)) for i in ids if i != pad] for ids in x.numpy()]
    attribution.write(a, x.numpy(), out, f"{title}: why", tokens=tokens, names=dm.task.class_names)
