"""What a prepared data set gives a model (`Task`): its kind, shapes, classes and the training
split's statistics. The data layer writes it, the models build from it, and a logged model carries
it; pydantic only, so a reader of it needs no torch."""

from __future__ import annotations

from pydantic import Field

from assay.config.common import StrictModel
from assay.datasets import Kind


class Task(StrictModel):
    """What the data gives a model. Only the fields of its kind are set:
    image/tabular: in_shape (+ classes); text: vocab_size, max_len, classes; timeseries: in_shape
    (window, features), horizon, target feature; ratings: n_users, n_items, rating range and each
    item's rating count in the training split.
    `mean`/`std` (per input feature, from the training split) let a model take raw units; so do
    `quantiles` (tabular), for a model that maps each feature to a normal by its ranks."""

    kind: Kind = "image"
    in_shape: tuple[int, ...] = ()  # one example, e.g. (1, 28, 28); (window, features)
    num_classes: int = Field(0, ge=0)
    class_names: list[str] = []
    vocab_size: int = Field(0, ge=0)
    pad_id: int = 0
    horizon: int = Field(0, ge=0)
    season: int = Field(0, ge=0)  # the seasonal period of a series, in steps
    target_index: int = 0  # the forecast feature's column
    n_users: int = Field(0, ge=0)
    n_items: int = Field(0, ge=0)
    rating_range: tuple[float, float] = (0.0, 0.0)
    item_counts: list[int] = []  # ratings: how often each item is rated in the training split
    item_attributes: list[list[int]] = []  # ratings: each item's attribute indices (genres, ...)
    n_item_attributes: int = Field(0, ge=0)
    mean: list[float] = []
    std: list[float] = []
    quantiles: list[list[float]] = []  # tabular: percentiles 0..100 of each feature (101 x F)
