"""Convolutional network: conv blocks (conv, norm, activation, 2x2 max-pool), then a dense head."""

from __future__ import annotations

from pydantic import Field, field_validator
from torch import nn

from assay.models.base import Activation, ImageClassifier, StrictModel, norm_act_drop
from assay.models.registry import register_model


class CNNConfig(StrictModel):
    channels: list[int] = Field(default=[32, 64], min_length=1)
    kernel_size: int = Field(3, ge=1, le=7)
    hidden: int = Field(128, ge=1, description="width of the dense layer before the classes")
    activation: Activation = "relu"
    dropout: float = Field(0.25, ge=0, lt=1)
    batch_norm: bool = True

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, k: int) -> int:
        if k % 2 == 0:
            raise ValueError("must be odd (1, 3, 5 or 7) so that 'same' padding keeps the size")
        return k


def build_cnn(in_shape: tuple[int, ...], num_classes: int, cfg: CNNConfig) -> nn.Module:
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for out in cfg.channels:
        layers += [
            nn.Conv2d(c, out, cfg.kernel_size, padding=cfg.kernel_size // 2),
            *norm_act_drop(out, cfg.model_copy(update={"dropout": 0.0}), conv=True),
        ]
        if min(h, w) >= 2:  # (B, out, h, w) -> (B, out, h/2, w/2)
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    layers += [
        nn.Flatten(),  # (B, c*h*w)
        nn.Dropout(cfg.dropout),
        nn.Linear(c * h * w, cfg.hidden),
        *norm_act_drop(cfg.hidden, cfg, conv=False),
        nn.Linear(cfg.hidden, num_classes),  # logits (B, K)
    ]
    return nn.Sequential(*layers)


@register_model("cnn", tiny={"channels": [4, 8], "hidden": 16})
class CNNClassifier(ImageClassifier):
    Config = CNNConfig

    def build_net(self) -> nn.Module:
        if len(self.task.in_shape) != 3:
            raise ValueError(f"cnn needs images (C, H, W); this data gives {self.task.in_shape}")
        return build_cnn(self.task.in_shape, self.task.num_classes, self.config)
