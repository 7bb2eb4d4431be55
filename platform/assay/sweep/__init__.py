"""Hyperparameter sweeps: an Optuna study whose trials train on Ray, tracked in MLflow and W&B.

    assay sweep -e experiments/sweeps/mnist-cnn.yaml [--trials 40] [--parallel 2] [--resume]

The sweep file (`SweepFile`) names a base experiment, the objective, the search space, the sampler,
the pruner and the budget. The driver (this process) opens the study and starts `parallel` Ray
tasks; each runs Optuna's own loop, `study.optimize`, on the shared study: ask, sample the
parameters (define-by-run, so one can depend on another: `when:`), train with
`assay.training.train` (the same code as `assay train`; with `train.workers > 0`, on Ray Train)
reporting the objective every epoch (the pruner may stop it early), tell. The budget callback
stops each loop when `trials` trials are finished or running.

Persistence and recovery are Optuna's: the study lives in `sweep.storage` (default
`sqlite:///<root>/optuna.db`; postgresql://... for many machines) with its heartbeat on. A trial
whose process dies (killed, out of memory, its driver gone) stops beating; after three missed
beats Optuna fails it and `RetryHeartbeatStaleTrialCallback` queues its parameters again, and its
MLflow run ends KILLED. A killed driver's trials die with it; `--resume` waits out their heartbeats,
retries them the same way, and carries on until `trials` trials are complete or pruned.

Tracking: one MLflow parent run per sweep (best value, best params, Optuna's plots), one child run
per trial (its params, per-epoch metrics, `trial.state`: complete / pruned / failed). W&B: one run
per trial, grouped under the study's name, plus the sweep's own run in the group. At the end,
`outputs/sweeps/<study>/best_params.yaml` and `metrics.json` (DVC outputs), and the best trial's
model is registered through the same champion gate as every other model.

Failures: what every trial needs (prepared data, a model for it, the GAN's registered judge, local
GPUs: `training.preflight`) is checked once in the driver before the study, MLflow or Ray is
touched. A sweep with no complete trial (all failed or pruned) ends its parent run FAILED, writes
no `best_params.yaml` or `metrics.json` (removing an earlier run's), and `assay sweep` exits 1.

  spec      the sweep file's schema
  load      reading and checking it; a trial's config
  study     Optuna's storage, sampler and parameters; the trials table (`assay sweep status`)
  trial     one trial: its context and pruning
  worker    a Ray task running `optimize`
  driver    the study, the workers, the log
  summary   results, plots, the best model
"""

from assay.sweep.load import Sweep, SweepError, load_sweep, safe_url, storage_url, sweep_path
from assay.sweep.spec import SweepConfig, SweepFile
from assay.sweep.study import build_sampler, open_storage, status, suggest, trials_table


# What trains (the driver, a trial's worker and context, the results) needs torch and Lightning,
# ~7 s to import: it loads on first use (PEP 562), so that `assay sweep status` and a sweep
# file's checks start in about a second. (Plain import statements, so that readers of the
# source, tests/test_dvc_graph.py among them, see what the package runs.)
def __getattr__(name: str):
    if name in ("fmt_params", "preflight", "run_sweep", "settle"):
        from assay.sweep import driver as module
    elif name == "SweepResult":
        from assay.sweep import summary as module
    elif name == "TrialContext":
        from assay.sweep import trial as module
    elif name == "run_trial":
        from assay.sweep import worker as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


__all__ = [
    "Sweep",
    "SweepConfig",
    "SweepError",
    "SweepFile",
    "SweepResult",
    "TrialContext",
    "build_sampler",
    "fmt_params",
    "load_sweep",
    "open_storage",
    "preflight",
    "run_sweep",
    "run_trial",
    "safe_url",
    "settle",
    "status",
    "storage_url",
    "suggest",
    "sweep_path",
    "trials_table",
]
