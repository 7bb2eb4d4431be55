"""Objectives: what a model is trained and judged for, one file each (see `base`). Every
objective module is imported here so that it registers itself."""

from assay.objectives import (  # noqa: F401
    anomaly,
    classification,
    contrastive,
    forecast,
    generation,
    masked_tokens,
    rating,
    reconstruction,
)
from assay.objectives.base import (
    Objective,
    Prediction,
    get_objective,
    list_objectives,
    register_objective,
)

__all__ = ["Objective", "Prediction", "get_objective", "list_objectives", "register_objective"]
