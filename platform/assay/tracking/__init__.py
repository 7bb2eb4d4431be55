"""MLflow and Weights & Biases, together: the only package that imports either.

Every training run is one MLflow run and one W&B run with the same name, each holding the other's
id. W&B runs offline (files under `<root>/wandb/`) unless the user chose otherwise; MLflow defaults
to `sqlite:///<root>/mlflow.db` with artifacts in `<root>/mlruns/`.

  store      the MLflow store, its experiments, params, the tags every run carries, and the
             registry's names and versions
  run        a tracked run (`TrackedRun`): MLflow + W&B, and the Lightning loggers into both
  mirror     W&B's settings, and results written to W&B outside a fit
  models     logged models (an MLflow pyfunc with its input contract), loaded on first use
  contract   the logged model's input contract: what `predict` and `mlflow models serve` run
  lineage    what a run was trained on (dataset inputs, config) and a version made from, read back
"""

from assay.tracking.lineage import (
    log_lineage,
    read_run,
    resolve_model,
    tag_version,
    trained_on,
)
from assay.tracking.mirror import log_wandb_summary, wandb_dir, wandb_mode
from assay.tracking.run import TrackedRun, log_image, run_loggers, system_metrics
from assay.tracking.store import (
    SCORED_ON,
    TrackingError,
    data_hash,
    end_run,
    ensure_store,
    experiment_id,
    files_md5,
    flatten,
    git_info,
    lock_hash,
    log_params,
    logged_model_source,
    logged_steps,
    open_store,
    provenance,
    register_version,
    registered_names,
    tracking_uri,
    ui_page,
)


# Logging and loading a model needs torch (~3 s to import): `models` loads on first use
# (PEP 562), so that `assay register` and `assay runs gc` start on MLflow alone.
def __getattr__(name: str):
    if name in ("card_of", "load_model", "load_net", "log_model"):
        from assay.tracking import models

        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCORED_ON",
    "TrackedRun",
    "TrackingError",
    "card_of",
    "data_hash",
    "end_run",
    "ensure_store",
    "experiment_id",
    "files_md5",
    "flatten",
    "git_info",
    "logged_steps",
    "load_model",
    "load_net",
    "lock_hash",
    "log_image",
    "log_lineage",
    "log_model",
    "log_params",
    "log_wandb_summary",
    "logged_model_source",
    "open_store",
    "provenance",
    "read_run",
    "register_version",
    "registered_names",
    "resolve_model",
    "run_loggers",
    "system_metrics",
    "tag_version",
    "tracking_uri",
    "ui_page",
    "trained_on",
    "wandb_dir",
    "wandb_mode",
]
