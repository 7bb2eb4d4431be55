"""A tracked run: one MLflow run and one W&B run for a training run, and its Lightning loggers."""

from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assay import lifecycle, orphans
from assay.tracking.lineage import log_lineage
from assay.tracking.mirror import wandb_dir, wandb_mode
from assay.tracking.store import ensure_store, experiment_id, log_params, tracking_uri

if TYPE_CHECKING:
    from assay.config import AssayConfig


def run_loggers(
    spec: dict[str, Any], *, wandb: bool = True, logged: dict[str, int] | None = None
) -> list:
    """Lightning loggers writing into an existing MLflow run and a W&B run of a known id.

    `spec` is `TrackedRun.spec()`: plain data, so a Ray Train worker (rank 0) can log into the
    MLflow run the driver opened (`wandb=False`: see `TrackedRun.attach_wandb`).

    Every metric of a fit is an epoch's (`models.base.log_epoch`), so both loggers put it on one
    axis, the epoch: MLflow's step is the epoch (not Lightning's optimiser step, which the
    refit's per-epoch metrics could not share), and W&B charts against `epoch`. `logged`: the
    last epoch at which an earlier attempt of this run logged each metric (a resumed fit re-runs
    the epochs after its checkpoint); those are not logged twice.
    """
    # Lightning (~5 s) and W&B (~0.5 s) load here, not with the package: `assay register`,
    # `predict` and the sweep driver use tracking and never a logger.
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    done = logged or {}

    class EpochMLFlowLogger(MLFlowLogger):
        def log_metrics(self, metrics, step=None):
            metrics = dict(metrics)
            epoch = metrics.pop("epoch", None)  # Lightning adds it to every call: the step
            step = int(epoch) if epoch is not None else step
            if step is not None:
                metrics = {k: v for k, v in metrics.items() if step > done.get(k, -1)}
            if metrics:
                super().log_metrics(metrics, step)

        def finalize(self, status: str = "success") -> None:
            # Lightning's logger ends the run here (FAILED on any interrupt, FINISHED before
            # the run's outputs exist). The run's end is `TrackedRun`'s (or the Ray driver's)
            # alone: a trial killed with its driver between the two writes was left FAILED,
            # and a stale trial's FAILED run is not ended KILLED again. Nothing is buffered
            # (log_batch is synchronous), so there is nothing else to do.
            return

    class EpochWandbLogger(WandbLogger):
        @property
        def experiment(self):
            new = self._experiment is None
            run = super().experiment
            if new:  # replaces Lightning's x-axis (trainer/global_step) with the epoch
                run.define_metric("epoch")
                run.define_metric("*", step_metric="epoch", step_sync=True)
            return run

    loggers: list = [
        EpochMLFlowLogger(
            experiment_name=spec["experiment"], tracking_uri=spec["uri"], run_id=spec["run_id"]
        )
    ]
    if wandb and spec["wandb_id"] is not None:
        root = Path(spec["root"])
        mode = wandb_mode(spec["wandb_mode"], root)
        logger = EpochWandbLogger(
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


def system_metrics(spec: dict[str, Any], node: str | None = None):
    """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPU where NVML or ROCm
    is there) logging into the run of `spec` every `system_metrics_interval` seconds, started;
    `node` prefixes its metrics (system/node0/...), one stream per machine of a Ray fit. None when
    `tracking.system_metrics` is off. Stop it with `.finish()` before the run ends."""
    if not spec.get("system_metrics"):
        return None
    import logging

    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # 3 lines per run
    monitor = SystemMetricsMonitor(
        spec["run_id"],
        sampling_interval=spec["system_metrics_interval"],
        node_id=node,
        tracking_uri=spec["uri"],
        resume_logging=True,  # a restarted Ray worker goes on from the steps already logged
    )
    monitor.start()
    return monitor


def log_image(loggers: list, path: Path, key: str, step: int) -> None:
    """An image from inside a fit into the run's MLflow artifacts (under `key`/) and W&B (as
    `key`, at `step`), through the Trainer's loggers (`run_loggers`)."""
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            lg.experiment.log_artifact(lg.run_id, str(path), key)
        elif isinstance(lg, WandbLogger):
            lg.log_image(key, [str(path)], step=step)


def source_tags() -> dict[str, str]:
    """What MLflow's UI shows as a run's "User" and "Source": MLflow's own context tags (user,
    source name and type), the source named by the command that made the run when that is
    `assay` ("assay train --run mnist-cnn", not the path of the script)."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = resolve_tags({})
    if Path(sys.argv[0]).name == "assay":
        tags["mlflow.source.name"] = shlex.join(["assay", *sys.argv[1:]])[:500]
    return tags


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
        close_predecessors: bool = True,
    ):
        self.cfg, self.root, self.run_name = cfg, root, run_name
        self.tags, self.params = tags, params
        self.uri = tracking_uri(cfg.tracking, root)
        self.loggers: list = []
        self.remote = remote
        self.wandb_after_fit = remote or wandb_after_fit
        self.wandb_group = wandb_group
        self.close_predecessors = close_predecessors
        self.monitor = None  # this process's system metrics (a Ray fit's workers log their own)

    def spec(self) -> dict[str, Any]:
        wb = self.cfg.tracking.wandb
        return {
            "root": str(Path(self.root).resolve()),
            "uri": self.uri,
            "experiment": self.cfg.tracking.experiment,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "system_metrics": self.cfg.tracking.system_metrics,
            "system_metrics_interval": self.cfg.tracking.system_metrics_interval,
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

    def attach_wandb(
        self, history: list[dict[str, float]], outcome: dict[str, str] | None = None
    ) -> None:
        """Start the W&B run after the fit and log its epochs (step = epoch); `outcome` (tags
        saying how the fit went: a sweep trial's `trial.state`, complete or pruned) goes to its
        summary, and each `*.state` among them to its tags.

        Why not from rank 0 of a Ray Train fit while it trains: after a worker is killed, the
        restarted rank 0 cannot reopen the run ("run ID ... is in use": the dead worker's W&B
        service still holds it), and two W&B processes writing one run id would be needed anyway.
        The epochs come from the checkpointed history, so a resumed fit loses none. A sweep's
        trials start theirs after the fit too: W&B's ~1 s start-up stays out of each trial's way.
        """
        if self.wandb_id is None or self.wandb is not None:
            return
        spec = self.spec()
        outcome = outcome or {}
        states = [v for k, v in outcome.items() if k.endswith(".state")]
        spec["wandb_tags"] = [*spec["wandb_tags"], *states]
        self.loggers += run_loggers(spec)[1:]
        for row in history:
            epoch = int(row.get("epoch", 0))
            self.wandb.log({"epoch": epoch, **{k: v for k, v in row.items() if k != "epoch"}})
        self.wandb.summary.update(outcome)

    def __enter__(self) -> TrackedRun:
        self.client = ensure_store(self.uri)
        exp_id = experiment_id(self.client, self.cfg.tracking.experiment, self.root, self.uri)
        owner = lifecycle.owner_tags()
        tags = {**source_tags(), **self.tags, **owner}
        run = self.client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        self.experiment_id = exp_id
        self.wandb_id = None
        try:
            self._close_predecessors()
            self._log_params()
            config = self.cfg.model_dump(mode="json")
            log_lineage(self.client, self.run_id, self.root, self.tags, config)
            wb = self.cfg.tracking.wandb
            if wb.mode != "disabled" and wandb_mode(wb.mode, self.root) != "disabled":
                from wandb.sdk.lib import runid  # W&B loads only for a run that uses it

                self.wandb_id = runid.generate_id()
                self.client.set_tag(self.run_id, "wandb.run_id", self.wandb_id)
                self.client.set_tag(self.run_id, "wandb.project", wb.project)
            if not self.remote:
                self.monitor = system_metrics(self.spec())
                self.loggers = run_loggers(self.spec(), wandb=not self.wandb_after_fit)
                if self.wandb is not None:
                    self.wandb_dir = str(Path(self.wandb.dir).parent)
                    self.client.set_tag(self.run_id, "wandb.run_dir", self.wandb_dir)
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def _close_predecessors(self) -> None:
        """End the dead runs of this key (not for a sweep's trials, which share one key: the
        sweep ends a dead trial's run itself, when Optuna finds its heartbeat stopped)."""
        key = self.tags.get("assay.key")
        if not key or not self.close_predecessors:
            return
        for f in orphans.close_predecessors(self.client, self.experiment_id, key, self.run_id):
            print(f"assay: earlier run {f.what}, owner {f.owner}: {f.action}", file=sys.stderr)

    def hold_scratch(self, path: Path) -> None:
        """Name a scratch folder this run writes into, for whoever cleans up if we are killed."""
        tags = self.client.get_run(self.run_id).data.tags
        self.client.set_tag(self.run_id, orphans.SCRATCH_TAG, orphans.add_scratch(tags, path))

    def _log_params(self) -> None:
        log_params(self.client, self.run_id, self.params)

    # Everything below is called on either side of training and also works after it ended.
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for k, v in metrics.items():
            self.client.log_metric(self.run_id, k, float(v), step=step or 0)
        if self.wandb is not None:
            self.wandb.summary.update(metrics)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def log_image(self, key: str, path: Path) -> None:
        """An image at the top of the run's artifacts (MLflow's Compare view shows only
        top-level files) and in W&B as `key`."""
        self.log_artifact(path)
        if self.wandb is not None:
            import wandb  # loaded already: this run has a W&B run

            self.wandb.log({key: wandb.Image(str(path))})

    @property
    def wandb(self):
        for lg in self.loggers:
            # by name: Lightning (~5 s) is not imported for a run without loggers
            if any(c.__name__ == "WandbLogger" for c in type(lg).__mro__):
                return lg.experiment
        return None

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.monitor is not None:
            self.monitor.finish()  # its last samples, while the run is still RUNNING
            self.monitor = None
        failed = exc_type is not None
        if failed:
            # A signal during a Lightning fit comes out as its SystemExit(1), one in a Ray
            # worker as Ray's: still KILLED.
            stopped = lifecycle.stop_reason(exc)
            status = "KILLED" if stopped else "FAILED"
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            error = stopped or f"{exc_type.__name__}: {exc}"
            try:
                self.client.log_text(self.run_id, text, "error.txt")
                self.client.set_tag(self.run_id, "error", error[:5000])
            finally:
                self.client.set_terminated(self.run_id, status)
        else:
            self.client.set_terminated(self.run_id, "FINISHED")
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
