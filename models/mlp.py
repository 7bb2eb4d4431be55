"""Feedforward network (MLP) over flattened images."""

from __future__ import annotations

import math

from torch import nn

from assay.config.architectures import MLPConfig
from assay.models.base import ImageClassifier, norm_act_drop
from assay.models.registry import register_model


def build_mlp(in_features: int, num_classes: int, cfg: MLPConfig) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
    width = in_features
    for h in cfg.hidden_sizes:
        layers += [nn.Linear(width, h), *norm_act_drop(h, cfg, conv=False)]
        width = h
    layers.append(nn.Linear(width, num_classes))  # logits (B, K)
    return nn.Sequential(*layers)


@register_model("mlp")
class MLPClassifier(ImageClassifier):
    Config = MLPConfig

    def build_net(self) -> nn.Module:
        return build_mlp(math.prod(self.task.in_shape), self.out_features, self.config)
