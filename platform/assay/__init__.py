"""Assay: DVC data stages, Lightning models, MLflow + W&B tracking, a gated model registry."""

__version__ = "0.1.0"
