"""Typed configuration: params.yaml, then an experiment file, then `--set a.b=value` overrides.

Everything is merged once and validated into `AssayConfig` before any data is read. A bad value is
a `ConfigError` whose message names each key path, the value given and what is allowed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from assay.datasets import get_dataset, list_datasets
from assay.models import get_entry
from assay.models.base import OptimConfig, StrictModel
from assay.models.registry import UnknownModelError
from assay.paths import find_root


class ConfigError(ValueError):
    """One or more bad configuration values; the message lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


# ----------------------------------------------------------------------------------------- sections
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


class TextPrepConfig(StrictModel):
    vocab_size: int = Field(8000, ge=100, le=200_000, description="WordPiece vocabulary")
    max_len: int = Field(64, ge=4, le=4096, description="tokens kept per text (pad/truncate)")


class SeriesPrepConfig(StrictModel):
    window: int = Field(96, ge=2, le=10_000, description="past steps a model sees")
    horizon: int = Field(48, ge=1, le=10_000, description="future steps it forecasts")
    season: int = Field(48, ge=1, description="seasonal-naive period (48 half-hours: a day)")
    stride: int = Field(1, ge=1, description="steps between training windows")

    @model_validator(mode="after")
    def _window_holds_a_season(self) -> SeriesPrepConfig:
        if self.window < self.season:
            raise ValueError(
                f"window ({self.window}) must be >= season ({self.season}): the seasonal-naive "
                "baseline repeats the last season of the window"
            )
        return self


class RatingsPrepConfig(StrictModel):
    negatives: int = Field(
        99, ge=1, le=10_000, description="unrated items ranked with each test item"
    )
    split: Literal["time", "random"] = Field(
        "time",
        description="per user: `time` puts each user's latest ratings in test (forecasting "
        "what they rate next); `random` draws them at random (the common benchmark protocol)",
    )


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


# A run's key names a folder (outputs/<key>/) and a registered model: plain characters only.
_KEY = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"


class TrainConfig(OptimConfig):
    """One training run. The optimiser fields (lr, optimizer, ...) come from `OptimConfig`."""

    name: str | None = Field(
        None,
        pattern=_KEY,
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
    # Ray Train: 0 workers trains in this process; N > 0 runs DDP across N Ray workers.
    workers: int = Field(0, ge=0, le=4096, description="Ray Train workers; 0 = in-process")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="also its torch threads")
    gpus_per_worker: float = Field(0.0, ge=0, le=64, description="> 0: NCCL on GPUs")
    max_failures: int = Field(
        2, ge=-1, le=1000, description="worker failures to recover from (-1: unlimited)"
    )
    # Architecture hyperparameters per registered name: {cnn: {channels: [32, 64]}, ...}
    models: dict[str, dict[str, Any]] = {}

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, name: str) -> str:
        return _check_dataset(name)

    @field_validator("arch")
    @classmethod
    def _arch(cls, name: str) -> str:
        try:
            get_entry(name)
        except UnknownModelError as e:
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
                f"{_short(value)} is not a monitor: use 'auto' or 'val/<metric>:max|min' "
                "(e.g. val/acc:max, val/rmse:min)"
            )
        return value

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

    def arch_config(self) -> dict[str, Any]:
        return self.models.get(self.arch, {})

    @property
    def key(self) -> str:
        """The run's output folder and its registered model's name: `name` (a params.yaml run's
        or an experiment file's name), else `<dataset>-<arch>`."""
        return self.name or f"{self.dataset}-{self.arch}"


class WandbConfig(StrictModel):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "assay"
    entity: str | None = None


class TrackingConfig(StrictModel):
    experiment: str = Field("assay", min_length=1)
    uri: str | None = Field(None, description="MLflow URI; $MLFLOW_TRACKING_URI, else mlflow.db")
    wandb: WandbConfig = WandbConfig()


class RayConfig(StrictModel):
    address: str | None = Field(
        None,
        description="a cluster to join (ray://, host:port, auto); $RAY_ADDRESS wins; "
        "none: a local Ray started for the run and stopped after it",
    )
    storage_path: str | None = Field(
        None,
        description="where Ray Train keeps checkpoints; default <root>/ray_results "
        "(on a multi-node cluster: storage every node reaches, e.g. NFS or s3://)",
    )


class EvaluateConfig(StrictModel):
    batch_size: int = Field(1024, ge=1, le=65_536)


class RegisterConfig(StrictModel):
    candidate_alias: str = "candidate"
    champion_alias: str = "champion"


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
        raw["train"] = _deep_merge({**raw["train"], "name": name}, self.runs[name])
        return validate(raw)

    def digest(self) -> str:
        """A short, stable hash of the validated config: equal digests, equal settings."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_dataset(name: str) -> str:
    if name not in list_datasets():
        raise ValueError(f"unknown dataset {_short(name)}; known: {', '.join(list_datasets())}")
    return name


# ------------------------------------------------------------------------------ merging and loading
# A YAML alias repeats a node without copying it, so nested aliases (a "billion laughs" file of a
# few KB) become billions of values as soon as anything walks the data, as validation does. PyYAML
# sets no limit of its own: the composed node graph is measured as it would expand, and refused
# past this many nodes, before any Python object is built from it. params.yaml has ~400.
MAX_YAML_NODES = 100_000


def safe_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load`, refusing documents whose aliases expand past `MAX_YAML_NODES` nodes."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set())
        if size > MAX_YAML_NODES:
            raise ConfigError(
                [
                    f"{what}: its aliases (*name) expand to {_count(size)} values, more than the "
                    f"{MAX_YAML_NODES:,} allowed; write the values out, or use fewer nested aliases"
                ]
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes in `node` once every alias is expanded (shared nodes counted each time used)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:  # an alias inside its own anchor: expands without end
        return MAX_YAML_NODES + 1
    open_.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        total += _expanded_size(child, sizes, open_)
        if total > MAX_YAML_NODES:
            break
    open_.discard(key)
    sizes[key] = total
    return total


def _count(n: int) -> str:
    return f"over {MAX_YAML_NODES:,}" if n > MAX_YAML_NODES else f"{n:,}"


def _cut(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _short(value: Any, limit: int = 120) -> str:
    """`repr(value)`, cut to `limit` characters: an error message names a value, never prints a
    whole (possibly huge) one."""
    return _cut(repr(value), limit)


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=0.01` -> (["train", "lr"], 0.01); the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError([f"--set {_short(text)}: expected KEY.PATH=VALUE, e.g. train.lr=0.01"])
    try:
        parsed = safe_yaml(value, f"--set {key}") if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError([f"--set {key}: cannot parse value {_short(value)}: {e}"]) from None
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for i, part in enumerate(path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                where = ".".join(path[: i + 1])
                raise ConfigError(
                    [f"--set {_short(text)}: {where} is {_short(nxt)}, not a section"]
                )
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: Path, what: str) -> dict:
    try:
        data = safe_yaml(path.read_text(), f"{what} {path}") or {}
    except FileNotFoundError:
        raise ConfigError([f"{what} {path} does not exist"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{what} {path} is not valid YAML: {e}"]) from None
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{what} {path}: expected a mapping of sections, got {type(data).__name__}"]
        )
    return data


def experiment_path(name: str | Path, root: Path) -> Path:
    """`mnist-cnn`, `mnist-cnn.yaml` or a path -> the experiment file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    candidate = root / "experiments" / (p.name if p.suffix else f"{p.name}.yaml")
    if candidate.exists():
        return candidate
    known = sorted(f.stem for f in (root / "experiments").glob("*.yaml"))
    raise ConfigError([f"experiment {str(name)!r} not found; known: {', '.join(known) or 'none'}"])


def load_config(
    experiment: str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    params: Path | None = None,
    root: Path | None = None,
    require: tuple[str, ...] = (),
) -> AssayConfig:
    """params.yaml (if present) <- experiment file <- overrides, validated.

    `require`: the sections the calling command reads; each must be in params.yaml or the
    experiment file, and not empty (an emptied params.yaml must not train on built-in defaults).
    An experiment's run is keyed by the file's name (`train.name`) unless the file names it. An
    experiment file with `run: NAME` starts from params.yaml's `runs.NAME` (what `dvc repro`
    trains, and where DVC tracks it) instead of repeating its settings."""
    root = root or find_root()
    params = params or root / "params.yaml"
    raw = read_yaml(params, "params file") if params.exists() else {}
    exp_file, exp_raw = None, {}
    if experiment:
        exp_file = experiment_path(experiment, root)
        exp_raw = read_yaml(exp_file, "experiment file")
    _check_required(require, params, raw, exp_file, exp_raw)
    if exp_file is not None:
        if "run" in exp_raw:
            raw = _with_run(raw, exp_raw.pop("run"), exp_file)
        raw = _deep_merge(raw, exp_raw)
        if not (exp_raw.get("train") or {}).get("name"):
            raw.setdefault("train", {})["name"] = _key_of(exp_file)
    return validate(apply_overrides(raw, overrides or []))


def _with_run(raw: dict, name: Any, exp_file: Path) -> dict:
    """params.yaml's `runs.NAME` over its `train`, for an experiment file that says `run: NAME`."""
    runs = raw.get("runs") or {}
    if not isinstance(name, str) or name not in runs:
        known = ", ".join(runs) or "none"
        raise ConfigError(
            [f"{exp_file}: run: {_short(name)} is not a run of params.yaml ({known})"]
        )
    train = _deep_merge({**(raw.get("train") or {}), "name": name}, runs[name] or {})
    return {**raw, "train": train}


def _check_required(require, params: Path, raw: dict, exp_file, exp_raw: dict) -> None:
    problems = []
    if require and not params.exists():
        problems.append(
            f"{params} does not exist: Assay reads its settings from the project's params.yaml; "
            "run this from the project folder (or one below it)"
        )
    else:
        for section in require:
            given = raw.get(section) or (exp_raw or {}).get(section)
            if isinstance(given, dict) and given:
                continue
            if not raw:
                state = "is empty"
            elif section not in raw:
                state = f"has no `{section}` section"
            else:
                state = f"has an empty `{section}` section"
            also = f" and {exp_file} has none" if exp_file else ""
            problems.append(
                f"{params} {state}{also}: this command reads `{section}`; restore it "
                f"(`git checkout {params.name}`) or give an experiment file that has it (-e NAME)"
            )
    if problems:
        raise ConfigError(problems)


def _key_of(exp_file: Path) -> str:
    if not re.match(_KEY, exp_file.stem):
        raise ConfigError(
            [
                f"experiment file {exp_file}: its name {_short(exp_file.stem)} is the run's key "
                "(outputs/<key>/ and the registered model's name): use letters, digits, '_', "
                "'.' and '-' only, or set train.name in the file"
            ]
        )
    return exp_file.stem


def rekey(before: dict, after: dict) -> dict:
    """`after` (a raw config: `before` with overrides) keeps `before`'s run key unless the
    overrides changed the data set or the architecture without naming the run: then it is no
    longer that run (its outputs and registered model would be another's), and its key falls
    back to <dataset>-<arch>."""
    b, a = before.get("train", {}), after.get("train", {})
    changed = any(b.get(k) != a.get(k) for k in ("dataset", "arch"))
    if changed and b.get("name") and a.get("name") == b.get("name"):
        after = {**after, "train": {**a, "name": None}}
    return after


def with_overrides(cfg: AssayConfig, overrides: list[str]) -> AssayConfig:
    """`cfg` with `--set KEY=VALUE` overrides applied and validated (see `rekey`)."""
    raw = cfg.model_dump()
    return validate(rekey(raw, apply_overrides(raw, overrides)))


# ------------------------------------------------------------------------------------- validation
def validate(raw: dict) -> AssayConfig:
    """Validate everything and report every problem at once, with full key paths."""
    try:
        cfg = AssayConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe_errors(e, AssayConfig)) from None
    problems: list[str] = []
    problems += _check_arch_configs(cfg.train.models, "train.models")
    problems += _check_pairing(cfg.train, "train")
    train_raw = cfg.train.model_dump()
    for name, override in cfg.runs.items():
        where = f"runs.{name}"
        if not re.match(_KEY, name):
            problems.append(
                f"{where}: a run's name is its outputs/<name>/ folder and its registered model's "
                "name: use letters, digits, '_', '.' and '-' only (at most 100)"
            )
            continue
        if not isinstance(override, dict):
            problems.append(
                f"{where}: expected a mapping of train settings, got {_short(override)}"
            )
            continue
        try:
            run = TrainConfig.model_validate(_deep_merge(train_raw, override))
        except ValidationError as e:
            problems += describe_errors(e, TrainConfig, prefix=where)
            continue
        problems += _check_arch_configs(override.get("models", {}), f"{where}.models")
        problems += _check_pairing(run, where)
    if problems:
        raise ConfigError(problems)
    return cfg


def _check_pairing(train: TrainConfig, where: str) -> list[str]:
    """The architecture must train on the dataset's kind of data (an LSTM on images: no)."""
    objectives = get_entry(train.arch).module_cls.OBJECTIVES
    kind = get_dataset(train.dataset).kind
    if kind in objectives:
        return []
    fits = list_datasets(set(objectives))
    return [
        f"{where}.arch: {train.arch!r} cannot train on {train.dataset!r} ({kind} data); it trains "
        f"on {', '.join(sorted(objectives))} data: datasets {', '.join(fits)}"
    ]


def _check_arch_configs(models: dict[str, Any], prefix: str) -> list[str]:
    problems = []
    for name, arch_cfg in models.items():
        try:
            entry = get_entry(name)
        except UnknownModelError as e:
            problems.append(f"{prefix}.{name}: {e}")
            continue
        try:
            entry.config(**(arch_cfg or {}))
        except ValidationError as e:
            problems += describe_errors(e, entry.config_cls, prefix=f"{prefix}.{name}")
        except TypeError:
            problems.append(f"{prefix}.{name}: expected a mapping, got {_short(arch_cfg)}")
    return problems


def describe_errors(err: ValidationError, model: type, prefix: str = "") -> list[str]:
    out = []
    for e in err.errors():
        loc = [_cut(str(p), 60) for p in e["loc"]]
        path = ".".join(([prefix] if prefix else []) + loc)
        given = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"][:-1])
            out.append(f"{path}: unknown key (value {_short(given)}); allowed keys: {allowed}")
        elif e["type"] == "missing":
            out.append(f"{path}: required, but not given")
        elif isinstance(given, dict):  # a whole-section check: its message names the keys
            out.append(f"{path}: {_cut(e['msg'].removeprefix('Value error, '))}")
        else:
            msg = _cut(e["msg"].removeprefix("Value error, "))
            out.append(f"{path}: got {_short(given)}; {msg}")
    return out


def _allowed_keys(model: type, loc: tuple) -> str:
    """The field names at `loc` inside `model`, for 'unknown key' messages."""
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not hasattr(field.annotation, "model_fields"):
            return "see params.yaml"
        model = field.annotation
    return ", ".join(model.model_fields)
