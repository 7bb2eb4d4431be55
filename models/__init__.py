"""Assay's architectures. Every model module is imported here so that it registers itself."""

from assay.models import autoencoder, cnn, gan, mlp, recommender, rnn, transformer  # noqa: F401
from assay.models.base import OptimConfig, Task
from assay.models.registry import create_model, get_entry, list_models, register_model

__all__ = ["OptimConfig", "Task", "create_model", "get_entry", "list_models", "register_model"]
