"""The architectures Assay knows, as typed settings: one pydantic class per family, the presets
(`cnn`, `cnn_tiny`, ...) and the data each trains on. Light on purpose (pydantic only, no torch):
the config schema validates `train.models.<arch>.<key>` against these classes like any other key,
and `assay config` / `fetch` / `prepare` never import torch. The modules that build the networks
live in `models/` (installed as `assay.models`); `@register_model("cnn")` there binds a
LightningModule to the declaration here and refuses one that was never declared.

`declare("cnn", CNNConfig, trains_on={"image": "classification"}, tiny={...})` registers `cnn`
(the class's defaults) and `cnn_tiny` (defaults updated with `tiny`, for tests and smoke runs).
`trains_on` maps a kind of data (`assay.datasets`) to the objective (`assay.objectives`) the
architecture serves on it; `pretrains` to the self-supervised objective it can also train for on
that data without labels (`train.objective`), whose encoder a later run starts from
(`train.init_from`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, create_model, field_validator, model_serializer, model_validator

from assay.config.common import StrictModel
from assay.errors import UserError

Activation = Literal["relu", "sigmoid", "tanh", "gelu"]
Pooling = Literal["auto", "last", "mean", "max"]


class MLPConfig(StrictModel):
    hidden_sizes: list[int] = Field(default=[512, 256], min_length=1)
    activation: Activation = "relu"
    dropout: float = Field(0.2, ge=0, lt=1)
    batch_norm: bool = True


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


class SequenceConfig(StrictModel):
    embedding_dim: int = Field(128, ge=2, le=4096, description="text: token embedding size")
    pooling: Pooling = Field(
        "auto", description="auto: text max (RNN) / mean (Transformer), series last"
    )
    dropout: float = Field(0.2, ge=0, lt=1)
    predict_residual: bool = Field(
        True, description="series: forecast the change from the seasonal-naive forecast"
    )
    linear_skip: bool = Field(
        False,
        description="series: add a linear map of the whole window to the forecast (LSTNet's "
        "highway: the linear part extrapolates, the network learns what it misses)",
    )
    level_norm: bool = Field(
        False,
        description="series: subtract the window's last-day mean of the target before the "
        "network and add it back after (RevIN-style, for level shifts)",
    )


class RNNConfig(SequenceConfig):
    hidden_size: int = Field(128, ge=1, le=8192)
    num_layers: int = Field(1, ge=1, le=16)
    bidirectional: bool = False
    layer_norm: bool = Field(False, description="LayerNorm on the recurrent outputs")


class TransformerConfig(SequenceConfig):
    d_model: int = Field(128, ge=2, le=8192)
    heads: int = Field(4, ge=1, le=64)
    num_layers: int = Field(2, ge=1, le=48)
    ff_dim: int = Field(256, ge=1, description="width of each layer's feed-forward block")
    activation: Activation = "gelu"
    pre_norm: bool = Field(True, description="LayerNorm before attention/FF (stabler training)")

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self


class AEConfig(StrictModel):
    hidden_sizes: list[int] = Field(default=[256, 64], min_length=1)
    latent_dim: int = Field(8, ge=1, le=4096)
    activation: Activation = "relu"
    dropout: float = Field(0.0, ge=0, lt=1)
    batch_norm: bool = False
    noise_std: float = Field(0.3, ge=0, description="denoising_autoencoder: Gaussian input noise")
    beta: float = Field(1.0, ge=0, description="vae: weight of the KL term")
    scaling: Literal["standard", "quantile"] = Field(
        "standard",
        description="tabular rows: standardise each feature (mean/std of the training split), or "
        "map it to a standard normal through its training quantiles (robust to heavy tails)",
    )
    ensemble: int = Field(
        1,
        ge=1,
        le=16,
        description="independently initialised autoencoders trained side by side; a row's "
        "anomaly score (and a reconstruction) is their mean",
    )


class GANConfig(StrictModel):
    latent_dim: int = Field(64, ge=1, le=4096)
    g_channels: int = Field(128, ge=2, description="generator width at the smallest resolution")
    g_extra: int = Field(
        1, ge=0, le=4, description="extra stride-1 3x3 conv blocks at each generator resolution"
    )
    d_channels: int = Field(64, ge=1, description="discriminator width at the first layer")
    dropout: float = Field(0.3, ge=0, lt=1, description="in the discriminator")
    batch_norm: bool = True
    label_smoothing: float = Field(0.1, ge=0, lt=0.5, description="real labels = 1 - this")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam's beta1 for both players (DCGAN: 0.5)")
    d_lr_scale: float = Field(1.0, gt=0, le=100, description="discriminator lr = train.lr * this")
    judge: str = Field(
        "models:/{dataset}-cnn@champion",
        description="the registered classifier that scores samples; {dataset} is filled in",
    )
    eval_samples: int = Field(2000, ge=10, le=100_000, description="images per Fréchet distance")
    conditional: bool = Field(
        False,
        description="class-conditional (cGAN): the generator's code is z plus a one-hot class, "
        "the discriminator a projection discriminator; needs a labelled data set",
    )


POPULARITY_HELP = "a learned bias per log2 bin of the item's training-split rating count"
ATTRIBUTE_HELP = "a learned bias per item attribute the data lists (MovieLens: genre, period)"
RECENT_HELP = (
    "the share of each user's latest training ratings that fit a second user offset, applied "
    "to every prediction (0 = off)"
)


class MFConfig(StrictModel):
    embedding_dim: int = Field(64, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0, lt=1, description="on the embeddings")
    biases: bool = True
    popularity_bias: bool = Field(True, description=POPULARITY_HELP)
    attribute_bias: bool = Field(True, description=ATTRIBUTE_HELP)
    recent_user_bias: float = Field(0.0, ge=0, lt=1, description=RECENT_HELP)
    reg: float = Field(0.05, ge=0, description="L2 on the batch's embeddings and biases")


class NCFConfig(StrictModel):
    embedding_dim: int = Field(32, ge=1, le=4096, description="per branch")
    hidden_sizes: list[int] = Field(default=[64, 32, 16], min_length=1)
    activation: Activation = "relu"
    dropout: float = Field(0.2, ge=0, lt=1)
    batch_norm: bool = False
    popularity_bias: bool = Field(True, description=POPULARITY_HELP)
    attribute_bias: bool = Field(True, description=ATTRIBUTE_HELP)
    recent_user_bias: float = Field(0.0, ge=0, lt=1, description=RECENT_HELP)
    reg: float = Field(0.01, ge=0, description="L2 on the batch's embeddings and recent biases")


class UnknownArchitectureError(UserError, KeyError):
    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # shared by a declaration's presets ("cnn" for cnn_tiny)
    settings: type[StrictModel]
    trains_on: dict[str, str]  # kind of data -> the objective served on it
    preset: dict[str, Any] = field(default_factory=dict)
    pretrains: dict[str, str] = field(default_factory=dict)  # kind -> self-supervised objective

    def objectives(self, kind: str) -> list[str]:
        """What it can train for on `kind` data: its objective first, then self-supervised."""
        return [o for o in (self.trains_on.get(kind), self.pretrains.get(kind)) if o]

    def config(self, **overrides: Any) -> StrictModel:
        """The validated settings: preset values, then `overrides`."""
        return self.settings(**{**self.preset, **overrides})


_ARCHITECTURES: dict[str, Architecture] = {}


def declare(
    name: str,
    settings: type[StrictModel],
    *,
    trains_on: dict[str, str],
    tiny: dict[str, Any] | None = None,
    pretrains: dict[str, str] | None = None,
) -> None:
    """Declare `name` (and, with `tiny`, `name_tiny`); a name declared twice is refused."""
    presets = {name: {}} | ({f"{name}_tiny": tiny} if tiny is not None else {})
    for preset_name, preset in presets.items():
        if preset_name in _ARCHITECTURES:
            raise ValueError(f"architecture {preset_name!r} is declared twice")
        settings(**preset)  # a preset that does not validate is a bug here, not a user's error
        _ARCHITECTURES[preset_name] = Architecture(
            preset_name, name, settings, dict(trains_on), dict(preset), dict(pretrains or {})
        )


def get_architecture(name: str) -> Architecture:
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {', '.join(list_architectures())}"
        ) from None


def list_architectures(family: str | None = None) -> list[str]:
    return sorted(n for n, a in _ARCHITECTURES.items() if family is None or a.family == family)


IMAGE_CLASSIFIER = {"image": "classification"}
SEQUENCE = {"text": "classification", "timeseries": "forecast"}
AUTOENCODER = {"image": "reconstruction", "tabular": "anomaly"}
RECOMMENDER = {"ratings": "rating"}
_SEQUENCE_TINY = {"hidden_size": 16, "embedding_dim": 16}
_AE_TINY = {"hidden_sizes": [16], "latent_dim": 2}
_MF_TINY = {"embedding_dim": 4, "recent_user_bias": 0.2}

_CONTRASTIVE = {"image": "contrastive"}  # SimCLR on the training images

declare(
    "mlp",
    MLPConfig,
    trains_on=IMAGE_CLASSIFIER,
    tiny={"hidden_sizes": [16], "dropout": 0.0},
    pretrains=_CONTRASTIVE,
)
declare(
    "cnn",
    CNNConfig,
    trains_on=IMAGE_CLASSIFIER,
    tiny={"channels": [4, 8], "hidden": 16},
    pretrains=_CONTRASTIVE,
)
for _cell in ("rnn", "lstm", "gru"):
    declare(_cell, RNNConfig, trains_on=SEQUENCE, tiny=_SEQUENCE_TINY)
declare(
    "transformer",
    TransformerConfig,
    trains_on=SEQUENCE,
    tiny={"d_model": 16, "heads": 2, "num_layers": 1, "ff_dim": 32, "embedding_dim": 16},
    pretrains={"text": "masked_tokens"},  # BERT's masked-token prediction on the texts
)
for _ae in ("autoencoder", "denoising_autoencoder", "vae"):
    declare(_ae, AEConfig, trains_on=AUTOENCODER, tiny=_AE_TINY)
declare(
    "gan",
    GANConfig,
    trains_on={"image": "generation"},
    tiny={"latent_dim": 8, "g_channels": 8, "d_channels": 4, "eval_samples": 100},
)
declare("matrix_factorization", MFConfig, trains_on=RECOMMENDER, tiny=_MF_TINY)
declare("ncf", NCFConfig, trains_on=RECOMMENDER, tiny={**_MF_TINY, "hidden_sizes": [8]})


class _Sections(StrictModel):
    """`train.models`: one optional section per declared architecture, typed by its settings
    class. A section given is validated over its preset (`cnn_tiny: {hidden: 32}` keeps
    cnn_tiny's channels); a section not given is not dumped, so a config's dump (and digest)
    holds only the sections it sets."""

    unknown_key: ClassVar[str] = "architecture"  # how `describe_errors` names an unknown key

    @model_validator(mode="before")
    @classmethod
    def _over_presets(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {
            name: {**_ARCHITECTURES[name].preset, **given}
            if name in _ARCHITECTURES and isinstance(given, dict)
            else given
            for name, given in data.items()
        }

    @model_serializer(mode="wrap")
    def _given_only(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    def get(self, name: str) -> StrictModel:
        """Architecture `name`'s settings: the section given, else its preset's."""
        return getattr(self, name, None) or get_architecture(name).config()


ArchitectureSettings = create_model(
    "ArchitectureSettings",
    __base__=_Sections,
    __doc__=_Sections.__doc__,
    **{n: (a.settings | None, None) for n, a in sorted(_ARCHITECTURES.items())},
)
