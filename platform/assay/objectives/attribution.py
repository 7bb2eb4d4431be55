"""Which inputs moved a model's answer: captum's Integrated Gradients (and a saliency map) over
pixels for image classifiers, over tokens for text classifiers (through the embedding layer) and
over the window's steps and features for forecasters.

`attribute` is shared by `assay explain` (a registered model on a user's file) and `evaluate`
(a few test examples per classifier, logged as explain.png / explain.html). `deletion_drop` checks
that an attribution means something: blanking the top-attributed inputs must hurt the predicted
class more than blanking as many at random (tests/test_explain.py asserts it on digits).

Baselines (IG's "absence of signal"): black pixels; the padding token, whose embedding is zero;
for a series, each feature's training mean (zero in the network's standard units).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from assay import plots

EXPLAINABLE = ("pixels", "text", "windows")  # the contract kinds: image/text classifiers, series
STEPS = 32  # IG's integration steps: the convergence delta stays ~1e-2 of the output here


@dataclass
class Attribution:
    kind: str  # pixels, text, windows
    ig: np.ndarray  # like the input: (N, C, H, W); (N, T) per token; (N, window, features)
    saliency: np.ndarray | None  # |d output / d input|, like `ig` (none for text: ids)
    target: np.ndarray | None  # the class explained (the predicted one); None for a forecast
    score: np.ndarray  # that class's probability, or the mean forecast over the horizon
    delta: np.ndarray  # IG's convergence delta per example (sum of attributions - difference)


def _embedding(net: nn.Module) -> nn.Embedding:
    found = [m for m in net.modules() if isinstance(m, nn.Embedding)]
    if not found:
        raise ValueError("a text model without an embedding layer: nothing to attribute tokens to")
    return found[0]


def _baseline(net: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "text":
        emb = _embedding(net)
        pad = emb.padding_idx if emb.padding_idx is not None else 0
        return torch.full_like(x, pad)
    if kind == "windows":
        norm = next((m for m in net.modules() if hasattr(m, "mean") and hasattr(m, "std")), None)
        if norm is not None and isinstance(norm.mean, torch.Tensor):
            return norm.mean.expand_as(x).clone()
    return torch.zeros_like(x)


def forward_fn(net: nn.Module, kind: str, probabilities: bool):
    """The scalar per example IG explains: a classifier's class probabilities (softmax of its
    logits, unless `net` gives probabilities already: the logged model's head), a forecaster's
    mean forecast over the horizon."""
    if kind == "windows":
        return lambda x: net(x).mean(1)
    if probabilities:
        return net
    return lambda x: torch.softmax(net(x), -1)


def attribute(
    net: nn.Module, x: torch.Tensor, kind: str, *, probabilities: bool = False, steps: int = STEPS
) -> Attribution:
    """Attributions of `net`'s answer to each of the inputs `x` (the network's input: scaled
    pixels, token ids, windows in raw units). `probabilities`: `net` ends in a softmax."""
    from captum.attr import IntegratedGradients, LayerIntegratedGradients, Saliency

    if kind not in EXPLAINABLE:
        raise ValueError(f"cannot attribute a {kind} model's answer; explainable: {EXPLAINABLE}")
    net = net.eval()
    fwd = forward_fn(net, kind, probabilities)
    x = x if kind == "text" else x.float()
    with torch.no_grad():
        out = fwd(x)
    target = None if kind == "windows" else out.argmax(-1)
    score = out if target is None else out.gather(1, target[:, None])[:, 0]
    base = _baseline(net, x, kind)
    # the text model's IG is through its embedding layer: the ids themselves have no gradient
    if kind == "text":
        ig = LayerIntegratedGradients(fwd, _embedding(net))
    else:
        ig = IntegratedGradients(fwd)
    attr, delta = ig.attribute(
        x,
        base,
        target=target,
        n_steps=steps,
        internal_batch_size=512,  # interpolated inputs per pass: memory bounded, whatever len(x)
        return_convergence_delta=True,
    )
    if kind == "text":  # per token: the sum over the embedding's dimensions
        return Attribution(kind, attr.sum(-1).detach().numpy(), None, target.numpy(),
                           score.numpy(), delta.detach().numpy())  # fmt: skip
    sal = Saliency(fwd).attribute(x.clone().requires_grad_(), target=target, abs=True)
    return Attribution(
        kind,
        attr.detach().numpy(),
        sal.detach().numpy(),
        None if target is None else target.numpy(),
        score.numpy(),
        delta.detach().numpy(),
    )


def deletion_drop(
    net: nn.Module, x: torch.Tensor, attr: np.ndarray, target: np.ndarray, fraction: float, seed=0
) -> tuple[np.ndarray, np.ndarray]:
    """How much the target class's probability falls when the top `fraction` of each image's
    pixels by attribution are set to the baseline (black), and when as many random ones are:
    (top, random), per example. A faithful attribution's top drop is the larger."""
    fwd = forward_fn(net, "pixels", probabilities=False)
    n = x[0].numel()
    k = max(1, int(round(fraction * n)))
    flat = x.reshape(len(x), -1)
    rng = np.random.default_rng(seed)
    top = np.argsort(-attr.reshape(len(x), -1), axis=1)[:, :k]
    rand = np.stack([rng.choice(n, k, replace=False) for _ in range(len(x))])
    drops = []
    with torch.no_grad():
        before = fwd(x).gather(1, torch.as_tensor(target)[:, None])[:, 0]
        for idx in (top, rand):
            blank = flat.clone()
            blank[np.arange(len(x))[:, None], idx] = 0.0
            after = fwd(blank.reshape(x.shape)).gather(1, torch.as_tensor(target)[:, None])[:, 0]
            drops.append((before - after).numpy())
    return drops[0], drops[1]


def token_html(tokens: list[list[str]], attrs: np.ndarray, labels: list[str], title: str) -> str:
    """A page of texts, each token's background red (for the explained answer) or blue
    (against it), by its attribution scaled to the text's largest."""
    rows = []
    for toks, a, label in zip(tokens, attrs, labels, strict=True):
        a = a[: len(toks)]
        scale = float(np.abs(a).max()) or 1.0
        spans = []
        for t, v in zip(toks, a, strict=True):
            alpha = min(1.0, abs(float(v)) / scale)
            rgb = "220,40,40" if v >= 0 else "40,90,220"
            spans.append(
                f'<span title="{float(v):+.4f}" style="background:rgba({rgb},{alpha:.2f});'
                f'padding:1px 2px;margin:1px;border-radius:3px">{html.escape(t)}</span>'
            )
        rows.append(f"<p><b>{html.escape(label)}</b><br>{' '.join(spans)}</p>")
    return (
        "<!doctype html><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><h3>{html.escape(title)}</h3>"
        "<p>Integrated Gradients: red tokens pushed towards the predicted class, blue against "
        "it (hover: the value).</p>" + "\n".join(rows)
    )


def write(a: Attribution, x: np.ndarray, out: Path, title: str, *, tokens=None, names=None,
          features=None) -> list[Path]:  # fmt: skip
    """explain.png (and explain.html for text) and attributions.npz in `out`. `x`: the inputs
    as shown (pixels in [0, 1]); `tokens`: each text's tokens; `names`: class names."""
    out.mkdir(parents=True, exist_ok=True)
    labels = _labels(a, names)
    arrays = {"ig": a.ig, "score": a.score, "delta": a.delta}
    if a.saliency is not None:
        arrays["saliency"] = a.saliency
    if a.target is not None:
        arrays["target"] = a.target
    written = [out / "attributions.npz"]
    np.savez(written[0], **arrays)
    png = out / "explain.png"
    if a.kind == "pixels":
        plots.attribution_images(x, a.ig, a.saliency, labels, png, title)
    elif a.kind == "text":
        plots.attribution_tokens(tokens, a.ig, labels, png, title)
        page = out / "explain.html"
        page.write_text(token_html(tokens, a.ig, labels, title), encoding="utf-8")
        written.append(page)
    else:
        plots.attribution_series(a.ig, features or [], labels, png, title)
    return [png, *written]


def _labels(a: Attribution, names) -> list[str]:
    if a.target is None:
        return [f"mean forecast {s:.4g}" for s in a.score]
    names = names or []
    return [
        f"{names[t] if t < len(names) else t} (p={s:.3f})"
        for t, s in zip(a.target, a.score, strict=True)
    ]
