"""MLflow and Weights & Biases, together: the only module that talks to either.

Every training run is one MLflow run and one W&B run with the same name, each holding the other's
id. W&B runs offline (files under `<root>/wandb/`) unless the user chose otherwise; MLflow defaults
to `sqlite:///<root>/mlflow.db` with artifacts in `<root>/mlruns/`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from filelock import FileLock

from assay import lifecycle, orphans

if TYPE_CHECKING:  # tracking sits below the config schema: it only reads the settings given
    from assay.config import AssayConfig, TrackingConfig

import mlflow
from mlflow.tracking import MlflowClient


# ------------------------------------------------------------------------------------ the store
def tracking_uri(cfg: TrackingConfig, root: Path) -> str:
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or cfg.uri
        or f"sqlite:///{root.resolve() / 'mlflow.db'}"
    )


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def ensure_store(uri: str) -> MlflowClient:
    """Create (or migrate) the store once, under a file lock: two processes creating a new SQLite
    store at once corrupt its schema migration (see PITFALLS)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, registry_uri=uri)
    db = _sqlite_path(uri)
    if db is None:
        return client
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=300):
        client.search_experiments(max_results=1)  # creates and migrates the schema
    return client


def open_store(uri: str) -> MlflowClient | None:
    """The store at `uri`, or None for a SQLite file that does not exist (nothing to read, and
    none created by looking)."""
    db = _sqlite_path(uri)
    return None if db is not None and not db.exists() else ensure_store(uri)


def experiment_id(client: MlflowClient, name: str, root: Path, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    # With a SQLite store, keep artifacts beside it whatever the cwd (a Ray job runs elsewhere).
    db = _sqlite_path(uri)
    location = (db.parent / "mlruns").as_uri() if db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


# ----------------------------------------------------------------------------------- provenance
def git_info(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else False
    return {"mlflow.source.git.commit": commit or "none", "git.dirty": str(dirty).lower()}


def data_hash(root: Path, dataset: str) -> dict[str, str]:
    """The prepared data's DVC hash from dvc.lock, else an md5 of the files we computed here."""
    lock = root / "dvc.lock"
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for out in stages.get(f"prepare@{dataset}", {}).get("outs", []):
            if out.get("path") == f"data/{dataset}" and out.get("md5"):
                return {"dvc.data_hash": out["md5"], "dvc.data_hash_source": "dvc.lock"}
    return {"dvc.data_hash": files_md5(root / "data" / dataset), "dvc.data_hash_source": "computed"}


SCORED_ON = "eval.data_hash"  # run tag: the sha256 of the test split `evaluate` scored


def files_md5(folder: Path) -> str:
    """One md5 over the names and bytes of every file below `folder`: the same files give the
    same hash wherever they are and whoever made them (dvc.lock's md5 exists only under DVC)."""
    h = hashlib.md5()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def provenance(root: Path, dataset: str) -> dict[str, str]:
    """The git commit and the data's hash: the tags every run carries."""
    return {**git_info(root), **data_hash(root, dataset)}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


# ---------------------------------------------------------------------------------------- W&B
def wandb_dir(root: Path) -> Path:
    """Where W&B writes (`<dir>/wandb/`): $WANDB_DIR, else the project root."""
    return Path(os.environ.get("WANDB_DIR") or root)


def _wandb_env(mode: str, root: Path) -> str:
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


# --------------------------------------------------------------------------------- a tracked run
def run_loggers(spec: dict[str, Any], *, wandb: bool = True, resumed_at: int = 0) -> list:
    """Lightning loggers writing into an existing MLflow run and a W&B run of a known id.

    `spec` is `TrackedRun.spec()`: plain data, so a Ray Train worker (rank 0) can log into the
    MLflow run the driver opened (`wandb=False`: see `TrackedRun.attach_wandb`). `resumed_at`:
    the global step of the checkpoint a resumed fit restarts from; Lightning re-runs the last
    validation there, and its metrics, already logged, are not logged twice.
    """
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    class ResumedMLFlowLogger(MLFlowLogger):
        def log_metrics(self, metrics, step=None):
            if step is not None and step < resumed_at:
                return
            super().log_metrics(metrics, step)

    loggers: list = [
        ResumedMLFlowLogger(
            experiment_name=spec["experiment"], tracking_uri=spec["uri"], run_id=spec["run_id"]
        )
    ]
    if wandb and spec["wandb_id"] is not None:
        root = Path(spec["root"])
        mode = _wandb_env(spec["wandb_mode"], root)
        logger = WandbLogger(
            name=spec["run_name"],
            project=spec["wandb_project"],
            entity=spec["wandb_entity"],
            id=spec["wandb_id"],
            save_dir=str(wandb_dir(root)),
            mode=mode,
            job_type="trial" if spec.get("wandb_group") else "train",
            group=spec.get("wandb_group"),
            tags=spec["wandb_tags"],
            config=spec["wandb_config"],
        )
        logger.experiment  # noqa: B018  starts the W&B run now, not at the first log
        loggers.append(logger)
    return loggers


class TrackedRun:
    """One MLflow run + one W&B run for a training run; use as a context manager.

    Inside, `loggers` feed a Lightning Trainer. Leaving the block normally ends both runs
    FINISHED; an exception ends the MLflow run FAILED (never left RUNNING) with the traceback as
    an artifact, ends the W&B run with exit code 1, and re-raises; Ctrl-C or a stop signal
    (`assay.lifecycle`) ends it KILLED.

    The run is tagged with its owner (host, pid, start time) and, via `hold_scratch`, the scratch
    folders it writes into. A process killed outright runs none of the above: the next run of
    the same `assay.key` finds such a run, owner gone, and ends it KILLED (`assay.orphans`).

    `remote=True` (Ray Train): rank 0 logs into the MLflow run from `spec()` as it trains; the
    W&B run starts after the fit (`attach_wandb`) and receives the per-epoch history then.
    """

    def __init__(
        self,
        cfg: AssayConfig,
        root: Path,
        run_name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        *,
        remote: bool = False,
        wandb_after_fit: bool = False,
        wandb_group: str | None = None,
    ):
        self.cfg, self.root, self.run_name = cfg, root, run_name
        self.tags, self.params = tags, params
        self.uri = tracking_uri(cfg.tracking, root)
        self.loggers: list = []
        self.remote = remote
        self.wandb_after_fit = remote or wandb_after_fit
        self.wandb_group = wandb_group

    def spec(self) -> dict[str, Any]:
        wb = self.cfg.tracking.wandb
        return {
            "root": str(Path(self.root).resolve()),
            "uri": self.uri,
            "experiment": self.cfg.tracking.experiment,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "wandb_id": self.wandb_id,
            "wandb_mode": wb.mode,
            "wandb_project": wb.project,
            "wandb_entity": wb.entity,
            "wandb_tags": [self.tags.get("dataset", ""), self.tags.get("arch", "")],
            "wandb_group": self.wandb_group,
            "wandb_config": {
                **self.params,
                "mlflow_run_id": self.run_id,
                "mlflow_tracking_uri": self.uri,
            },
        }

    def attach_wandb(self, history: list[dict[str, float]], state: str | None = None) -> None:
        """Start the W&B run after the fit and log its epochs (step = epoch); `state` (a sweep
        trial's: complete or pruned) goes to its summary and tags.

        Why not from rank 0 of a Ray Train fit while it trains: after a worker is killed, the
        restarted rank 0 cannot reopen the run ("run ID ... is in use": the dead worker's W&B
        service still holds it), and two W&B processes writing one run id would be needed anyway.
        The epochs come from the checkpointed history, so a resumed fit loses none. A sweep's
        trials start theirs after the fit too: W&B's ~1 s start-up stays out of each trial's way.
        """
        if self.wandb_id is None or self.wandb is not None:
            return
        spec = self.spec()
        if state:
            spec["wandb_tags"] = [*spec["wandb_tags"], state]
        self.loggers += run_loggers(spec)[1:]
        for row in history:
            epoch = int(row.get("epoch", 0))
            self.wandb.log({"epoch": epoch, **{k: v for k, v in row.items() if k != "epoch"}})
        if state:
            self.wandb.summary["trial_state"] = state

    def __enter__(self) -> TrackedRun:
        self.client = ensure_store(self.uri)
        exp_id = experiment_id(self.client, self.cfg.tracking.experiment, self.root, self.uri)
        owner = lifecycle.owner_tags()
        run = self.client.create_run(exp_id, run_name=self.run_name, tags={**self.tags, **owner})
        self.run_id = run.info.run_id
        self.experiment_id = exp_id
        self.wandb_id = None
        try:
            self._close_predecessors()
            self._log_params()
            wb = self.cfg.tracking.wandb
            if wb.mode != "disabled" and _wandb_env(wb.mode, self.root) != "disabled":
                from wandb.sdk.lib import runid

                self.wandb_id = runid.generate_id()
                self.client.set_tag(self.run_id, "wandb.run_id", self.wandb_id)
                self.client.set_tag(self.run_id, "wandb.project", wb.project)
            if not self.remote:
                self.loggers = run_loggers(self.spec(), wandb=not self.wandb_after_fit)
                if self.wandb is not None:
                    self.wandb_dir = str(Path(self.wandb.dir).parent)
                    self.client.set_tag(self.run_id, "wandb.run_dir", self.wandb_dir)
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def _close_predecessors(self) -> None:
        """End the dead runs of this key (a sweep's trials: `assay sweep --resume` does)."""
        key = self.tags.get("assay.key")
        if not key or "optuna.trial" in self.tags:
            return
        for f in orphans.close_predecessors(self.client, self.experiment_id, key, self.run_id):
            print(f"assay: earlier run {f.what}, owner {f.owner}: {f.action}", file=sys.stderr)

    def hold_scratch(self, path: Path) -> None:
        """Name a scratch folder this run writes into, for whoever cleans up if we are killed."""
        tags = self.client.get_run(self.run_id).data.tags
        self.client.set_tag(self.run_id, orphans.SCRATCH_TAG, orphans.add_scratch(tags, path))

    def _log_params(self) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(self.params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    # Everything below is called on either side of training and also works after it ended.
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k, float(v), step=step or 0)
        if self.wandb is not None:
            self.wandb.summary.update(metrics)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_image(self, key: str, path: Path) -> None:
        self.log_artifact(path, "plots")
        if self.wandb is not None:
            import wandb

            self.wandb.log({key: wandb.Image(str(path))})

    @property
    def wandb(self):
        for lg in self.loggers:
            if type(lg).__name__ == "WandbLogger":
                return lg.experiment
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        failed = exc_type is not None
        if failed:
            # A signal during a Lightning fit comes out as its SystemExit(1): still KILLED.
            sig = lifecycle.stopped_by()
            stopped = issubclass(exc_type, KeyboardInterrupt) or sig is not None
            status = "KILLED" if stopped else "FAILED"
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            error = f"stopped by {sig.name}" if sig else f"{exc_type.__name__}: {exc}"
            try:
                self.client.log_text(self.run_id, text, "error.txt")
                self.client.set_tag(self.run_id, "error", error[:5000])
            finally:
                self.client.set_terminated(self.run_id, status)
        else:
            self.client.set_terminated(self.run_id, "FINISHED")
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)


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
    mode = _wandb_env(cfg.wandb.mode, root)
    if mode == "disabled":
        return
    import wandb

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
