"""W&B beside MLflow: where it writes, that it never prompts, and results written outside a fit
(the live run is a Lightning logger: `assay.tracking.run`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from assay.config import TrackingConfig


def wandb_dir(root: Path) -> Path:
    """Where W&B writes (`<dir>/wandb/`): $WANDB_DIR, else the project root."""
    return Path(os.environ.get("WANDB_DIR") or root)


def wandb_mode(mode: str, root: Path) -> str:
    """The W&B mode to use ($WANDB_MODE wins over the config). Keeps an offline W&B's state inside
    the project, and makes sure it never prompts: online without credentials is an error."""
    mode = os.environ.get("WANDB_MODE") or mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
        raise RuntimeError(
            "W&B online logging needs credentials: run `wandb login` or set WANDB_API_KEY, "
            "or keep tracking.wandb.mode=offline (then `wandb sync wandb/offline-run-*`)"
        )
    if mode != "online":
        for var, sub in (
            ("WANDB_CONFIG_DIR", "config"),
            ("WANDB_CACHE_DIR", "cache"),
            ("WANDB_DATA_DIR", "data"),
        ):
            os.environ.setdefault(var, str(wandb_dir(root) / "wandb" / f".{sub}"))
    return mode


def _netrc_has_wandb() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def log_wandb_summary(
    cfg: TrackingConfig,
    root: Path,
    wandb_id: str | None,
    run_name: str,
    metrics: dict[str, float | None],
    images: dict[str, Path],
    *,
    group: str | None = None,
    config: dict[str, Any] | None = None,
) -> None:
    """Results into W&B: into a training run's own W&B run, resumed by `wandb_id` (offline files
    too; nothing when the run had none), or, with `group` and no id, into a new run of that
    group (a sweep's summary beside its trials). The one place outside a fit that writes W&B."""
    if (wandb_id is None and group is None) or cfg.wandb.mode == "disabled":
        return
    mode = wandb_mode(cfg.wandb.mode, root)
    if mode == "disabled":
        return
    import wandb  # ~0.5 s: only when there is something to write

    how = {"id": wandb_id, "resume": "allow", "job_type": "train"}
    if wandb_id is None:
        how = {"group": group, "job_type": "sweep", "config": config}
    run = wandb.init(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        name=run_name,
        dir=str(wandb_dir(root)),
        mode=mode,
        **how,
    )
    try:
        numbers = {k: v for k, v in metrics.items() if v is not None}
        run.log({**numbers, **{k: wandb.Image(str(p)) for k, p in images.items()}})
        run.summary.update(numbers)
    finally:
        run.finish()
