"""The sections of params.yaml past training: how each kind of data is prepared (text, series,
ratings), where runs are tracked (MLflow, W&B), where Ray runs, how `evaluate` scores and what
`register`'s gate asks (`assay.config.schema` puts them together into `AssayConfig`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from assay.config.common import StrictModel


class TextPrepConfig(StrictModel):
    vocab_size: int = Field(8000, ge=100, le=200_000, description="WordPiece vocabulary")
    max_len: int = Field(64, ge=4, le=4096, description="tokens kept per text (pad/truncate)")


class SeriesPrepConfig(StrictModel):
    window: int = Field(96, ge=2, le=10_000, description="past steps a model sees")
    horizon: int = Field(48, ge=1, le=10_000, description="future steps it forecasts")
    season: int = Field(48, ge=1, description="seasonal-naive period (48 half-hours: a day)")
    stride: int = Field(1, ge=1, description="steps between training windows")
    ahead: list[Literal["WorkDay", "Temperature"]] = Field(
        ["WorkDay", "Temperature"],
        description="what a forecaster knows of the day it forecasts: each row also carries "
        "these a day (48 half-hours) later, as <name>_ahead, so a window's last day holds the "
        "forecast day's. Temperature_ahead is the temperature measured then, standing in for "
        "a day-ahead weather forecast (ex post)",
    )

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


class WandbConfig(StrictModel):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "assay"
    entity: str | None = None


class TrackingConfig(StrictModel):
    experiment: str = Field("assay", min_length=1)
    uri: str | None = Field(None, description="MLflow URI; $MLFLOW_TRACKING_URI, else mlflow.db")
    ui: str = Field(
        "http://127.0.0.1:5000",
        pattern=r"^https?://[^/\s]+/?$",
        description="where MLflow's UI is opened for a file store: `assay ui` serves it there, "
        "and optuna-dashboard's trials link to their runs there (a tracking server is its own)",
    )
    wandb: WandbConfig = WandbConfig()
    system_metrics: bool = Field(
        True,
        description="MLflow's system metrics (CPU, memory, disk, network, GPU when present) "
        "into each run: system/* in this process, system/node<N>/* per Ray Train node",
    )
    system_metrics_interval: float = Field(
        10.0, gt=0, le=3600, description="seconds between two samples of the system metrics"
    )

    def store_uri(self, root: Path) -> str:
        """The MLflow store a run under `root` uses: $MLFLOW_TRACKING_URI, else `uri`, else
        the project's own SQLite file (its artifacts in mlruns/ beside it)."""
        return (
            os.environ.get("MLFLOW_TRACKING_URI")
            or self.uri
            or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
        )

    def ui_url(self, root: Path) -> str:
        """Where a person sees this store's runs: the tracking server itself, else `ui`."""
        store = self.store_uri(root)
        if not store.startswith(("http://", "https://")):
            return self.ui.rstrip("/")
        parts = urlsplit(store)  # never a user or password into a printed or stored link
        return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")


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
    placement: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK",
        description="how Ray Train places the workers: PACK (as few nodes as fit), SPREAD (over "
        "the nodes, where possible), STRICT_SPREAD (one node each, or wait)",
    )


class EvaluateConfig(StrictModel):
    batch_size: int = Field(1024, ge=1, le=65_536)


class RegisterConfig(StrictModel):
    candidate_alias: str = "candidate"
    champion_alias: str = "champion"
    require_lift: bool = Field(
        True,
        description="champion only if it beats its classical baseline on the same split "
        "(evaluate's test/lift > 0); else it stays candidate. The GAN has no baseline",
    )
    max_slice_gap: float | None = Field(
        None,
        ge=0,
        description="champion only if the widest gap of its primary metric between slices of "
        "the test split (evaluate's test/slices/gap_<metric>: classes; MovieLens users' gender, "
        "age, occupation, films' popularity) is at most this; null: not checked",
    )
