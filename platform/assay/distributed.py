"""Training on Ray Train: the same Lightning module, DDP across `train.workers` Ray workers.

Nothing in a model knows about Ray. The driver (`assay train`) opens the MLflow run; each worker
builds the data module and the model from the config, and Lightning runs DDP through Ray's
strategy and cluster environment (gloo on CPU, NCCL on GPU). Rank 0 logs into the driver's
MLflow run as it trains; the driver gives the W&B run the epochs when the fit ends (see
`TrackedRun.attach_wandb`). One run of each, however many workers train.

Every epoch, each worker saves a Lightning checkpoint and reports it to Ray with the epoch's
metrics (`RayTrainReportCallback`). Ray keeps the latest one (to resume from) and the best one by
the monitor. When a worker dies, Ray restarts the group (`FailureConfig(max_failures)`) and the
workers resume from the latest checkpoint, logging into the same MLflow run: the epochs carry on
from where they stopped. Our History callback travels in the checkpoint, so the history survives
too. A failure that exhausts the retries raises with the worker's traceback, and the driver ends
the MLflow run FAILED.

No `ray.address` / $RAY_ADDRESS: a local Ray is started for the run and stopped after it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from assay import engine, lifecycle, tracking
from assay.config import ConfigError, validate
from assay.engine import Fit
from assay.rayenv import auth_env, ray_defaults

# Ray (~2 s to import) loads in the functions that start it: `import assay.distributed` (which
# `assay.training` does) costs a run on one machine nothing.


def address(cfg) -> str | None:
    return os.environ.get("RAY_ADDRESS") or cfg.ray.address


def check_local_gpus(cfg) -> None:
    """A local Ray (no cluster) asked for more GPUs than this machine has would wait for them
    forever; say so before any run starts. A cluster may add GPU nodes (autoscaling), so there
    Ray's own "waiting for resources" is the right answer."""
    before_ray(cfg)
    import ray

    t = cfg.train
    if t.workers == 0 or t.gpus_per_worker == 0 or address(cfg) or ray.is_initialized():
        return
    need = math.ceil(t.workers * t.gpus_per_worker - 1e-9)
    have = torch.cuda.device_count()
    if need > have:
        raise ConfigError(
            [
                f"train.gpus_per_worker: {t.workers} workers x {t.gpus_per_worker} GPU need "
                f"{need} GPU(s) and this machine has {have} (torch.cuda.device_count()); set "
                "train.gpus_per_worker=0 to train on CPUs, or run on a cluster with GPUs "
                "(--address / $RAY_ADDRESS)"
            ]
        )


def storage_path(cfg, root: Path) -> str:
    """An absolute folder (workers run elsewhere) or a URI such as s3://bucket/prefix."""
    path = cfg.ray.storage_path
    if path and "://" in path:
        return path.rstrip("/")
    return str(Path(path or root / "ray_results").resolve())


@contextlib.contextmanager
def _loopback_only():
    """A local Ray started inside listens on 127.0.0.1 only: GCS, raylet, agents, workers.

    On Linux, Ray gives a new node the machine's LAN address, and its servers listen there or
    on all interfaces. In its single-machine mode (the default on macOS and Windows:
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) it takes 127.0.0.1 instead and binds every server to
    it; `assay cluster up` starts its head in that mode too (see `cluster._bind_args`). Ray
    reads the variable once, at import, so the constant it became is set as well, for this
    `ray.init` only: a later `ray.init(address=CLUSTER)` in this process is left as it was.
    """
    from ray._private import ray_constants

    var = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(var)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[var] = "0"  # for the processes it starts (raylet, agents, workers)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved[0]
        if saved[1] is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = saved[1]


def on_loopback(address: str) -> bool:
    """host:port (or ray://host:port) names this machine's loopback."""
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, or "auto"
        return False


def before_ray(cfg) -> None:
    """What Ray reads once, when it loads: Assay's defaults, and for a cluster its token mode
    (`RAY_AUTH_MODE` set after `import ray` is not seen: "Authentication token is missing")."""
    ray_defaults()  # Ray Train reads its version switch once, too
    if address(cfg):
        auth_env()


@contextlib.contextmanager
def ray_session(cfg, dashboard: bool = True):
    """Joined to the configured cluster, or a local Ray for this run only. `dashboard=False`:
    a local Ray without the dashboard (and its CPU), for work that needs no Ray Train."""
    before_ray(cfg)
    import ray

    if ray.is_initialized():  # inside a Ray job or a caller's own session
        yield
        return
    target = address(cfg)
    if target:  # a cluster: its workers import assay from the job's runtime_env or install
        # a head on loopback (`assay cluster up`): Ray would turn 127.0.0.1 into the LAN address
        # and look for the GCS there
        with _loopback_only() if on_loopback(target) else contextlib.nullcontext():
            ray.init(address=target, log_to_driver=True)
    else:
        t = cfg.train
        need = max(1, int(round(t.workers * t.cpus_per_worker + 0.4999)))
        with _loopback_only():
            ray.init(
                address="local",  # a new Ray, never whatever head the machine has running
                num_cpus=max(need, os.cpu_count() or 1),
                num_gpus=None if t.gpus_per_worker else 0,
                # Ray Train's cleanup polls the state API, which lives in the dashboard: without
                # it, every few seconds "Failed to query Ray Train Controller actor state".
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                log_to_driver=True,
            )
    lifecycle.reclaim_sigterm()  # ray.init made SIGTERM a bare sys.exit: stop cleanly instead
    try:
        yield
    finally:
        ray.shutdown()


def fit(
    cfg, root: Path, run, monitor: str, mode: str, dest: Path, extra=(), bar: bool = True
) -> Fit:
    """Train `cfg.train` on Ray Train workers, logging into the open `run`; the best epoch's
    checkpoint is copied to `dest/best.ckpt`. `extra`: the caller's callbacks, run on every
    worker (picklable; a sweep's pruning callback reports from rank 0). `bar`: rank 0's progress
    bar."""
    before_ray(cfg)
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    t = cfg.train
    use_gpu = t.gpus_per_worker > 0
    storage = storage_path(cfg, root)
    name = run.run_name
    run.client.set_tag(run.run_id, "ray.run_name", name)
    run.client.set_tag(run.run_id, "ray.storage_path", f"{storage}/{name}")
    run.client.set_tag(run.run_id, "ray.workers", str(t.workers))
    worker_config = {
        "cfg": cfg.model_dump(mode="json"),
        "root": str(Path(root).resolve()),
        "tracking": run.spec(),
        "monitor": monitor,
        "mode": mode,
        "callbacks": list(extra),
        "bar": bar,
    }
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker,
        train_loop_config=worker_config,
        scaling_config=ScalingConfig(
            num_workers=t.workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.ray.placement,
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=1,  # the best; Ray also always keeps the latest (to resume from)
                checkpoint_score_attribute=monitor,
                checkpoint_score_order=mode,
            ),
            failure_config=FailureConfig(max_failures=t.max_failures),
        ),
    )
    started = time.perf_counter()
    with ray_session(cfg):
        result = trainer.fit()
    seconds = time.perf_counter() - started
    best = result.get_best_checkpoint(monitor, mode) or result.checkpoint
    if best is None:
        raise RuntimeError(f"Ray Train reported no checkpoint under {storage}/{name}")
    with result.checkpoint.as_directory() as latest:
        # only its History and epoch are read: mmap spares reading the weights and optimiser
        state = torch.load(
            Path(latest) / "checkpoint.ckpt", map_location="cpu", weights_only=False, mmap=True
        )
    rows = _history_rows(state)
    best_path = dest / "best.ckpt"
    with best.as_directory() as d:
        shutil.copyfile(Path(d) / "checkpoint.ckpt", best_path)
    info = {
        "name": name,
        "storage_path": f"{storage}/{name}",
        "workers": t.workers,
        "address": address(cfg) or "local",
        "seconds": round(seconds, 1),
    }
    run.client.set_tag(run.run_id, "ray.seconds", f"{seconds:.1f}")
    # the checkpoint the run's model came from, as Ray keeps it (`assay lineage` shows it)
    run.client.set_tag(run.run_id, "ray.best_checkpoint", best.path)
    run.params = {**run.params, "ray": info}  # the W&B run's config, when the driver starts it
    return Fit(best_path, rows, int(state.get("epoch", -1)) + 1, info)  # epoch is 0-based


def _history_rows(state: dict) -> list[dict[str, float]]:
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("History") and isinstance(value, dict) and "rows" in value:
            return value["rows"]
    return []


def _logged_until(spec: dict) -> dict[str, int]:
    """The last epoch at which an earlier attempt of this run logged each metric (none on the
    first attempt).

    A restarted worker group resumes from the last checkpoint Ray registered, or from scratch
    when a worker died before the first one; either way it re-runs epochs whose metrics the MLflow
    run already holds. Those are not logged twice.
    """
    return tracking.logged_steps(spec["uri"], spec["run_id"])


def _worker(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    cfg = validate(config["cfg"])
    root = Path(config["root"])
    t = cfg.train
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))  # two workers on 2 cores: 1 each
    pl.seed_everything(t.seed, workers=True, verbose=False)
    dm, model = engine.build(cfg, root)
    rank = ray.train.get_context().get_world_rank()
    checkpoint = ray.train.get_checkpoint()
    loggers = (
        tracking.run_loggers(
            config["tracking"], wandb=False, logged=_logged_until(config["tracking"])
        )
        if rank == 0
        else False
    )
    extra = [*model.objective.callbacks(model, cfg, root), *config["callbacks"]]
    callbacks, _ = engine.fit_callbacks(
        cfg, extra, config["monitor"], config["mode"], config["tracking"]["run_id"]
    )
    bar = rank == 0 and config["bar"]
    if bar:
        # Worker output reaches the driver through Ray's log monitor, line by line: a bar
        # redrawn every step costs the training cores a share; ~20 redraws an epoch do not.
        callbacks.append(TQDMProgressBar(refresh_rate=max(1, _steps_per_epoch(dm, t) // 20)))
    trainer = engine.trainer(
        cfg,
        model,
        [*callbacks, RayTrainReportCallback()],
        accelerator="gpu" if t.gpus_per_worker > 0 else "cpu",
        devices="auto",
        # Gradients live in DDP's all-reduce buckets: one copy less per step.
        strategy=RayDDPStrategy(gradient_as_bucket_view=True),
        plugins=[RayLightningEnvironment()],
        logger=loggers,
        enable_checkpointing=False,
        enable_progress_bar=bar,
    )
    trainer = prepare_trainer(trainer)
    context = ray.train.get_context()
    # one stream of system metrics per machine (its first worker's), named by its node rank
    monitor = (
        tracking.system_metrics(config["tracking"], node=f"node{context.get_node_rank()}")
        if context.get_local_rank() == 0
        else None
    )
    try:
        if checkpoint is None:
            trainer.fit(model, datamodule=dm)
        else:
            with checkpoint.as_directory() as d:
                trainer.fit(model, datamodule=dm, ckpt_path=str(Path(d) / "checkpoint.ckpt"))
    finally:
        if monitor is not None:
            monitor.finish()


def _steps_per_epoch(dm, t) -> int:
    """Batches each worker trains per epoch (its shard of the training split)."""
    dm.setup("fit")
    n = len(dm.train_dataloader().dataset)
    return max(1, n // max(1, t.workers) // t.batch_size)
