"""The sweep file's schema: the search space (floats, ints, choices, each maybe `when` another
value is set), the objective, the sampler, the pruner and the budget (`SweepFile`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from assay.config.common import StrictModel


class _Param(StrictModel):
    when: dict[str, Any] | None = Field(
        None,
        description="sample only when these keys (sampled earlier, or the base config's) have "
        "these values, e.g. {train.arch: cnn}",
    )


class FloatParam(_Param):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ValueError("a log-scaled float takes no step")
        return self


class IntParam(_Param):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise ValueError("a log-scaled int takes step 1")
        return self


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


def _check_range(low: float, high: float, log: bool) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"a log scale needs low > 0, got {low}")


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class ObjectiveConfig(StrictModel):
    metric: str = Field("val/acc", pattern=r"^val/.+", description="a val/ metric the model logs")
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerConfig(StrictModel):
    name: Literal["tpe", "random", "cmaes", "grid"] = "tpe"
    seed: int | None = Field(0, description="the sampler's seed; null: a random one")
    n_startup_trials: int = Field(5, ge=0, description="tpe, cmaes: random trials first")


class PrunerConfig(StrictModel):
    name: Literal["hyperband", "asha", "median", "threshold", "none"] = "hyperband"
    # Steps are epochs numbered from 0, as Lightning's (and Optuna's own Lightning callback's)
    # are: the pruner's resource at step s is s + 1 epochs, so min_resource 1 cuts after two
    # (in Hyperband's most eager bracket; the others first cut at min_resource * factor^k).
    min_resource: int = Field(
        1, ge=1, description="hyperband, asha: the first cut's epoch (from 0: 1 = after two)"
    )
    reduction_factor: int = Field(3, ge=2, description="hyperband, asha: keep 1 in this many")
    n_startup_trials: int = Field(5, ge=0, description="median: trials before it prunes")
    n_warmup_steps: int = Field(
        1, ge=0, description="median: the first epoch it may prune at (from 0: 1 = after two)"
    )
    lower: float | None = Field(None, description="threshold: prune below this value")
    upper: float | None = Field(None, description="threshold: prune above this value")


class SweepConfig(StrictModel):
    experiment: str | None = Field(None, description="the base: experiments/NAME.yaml")
    run: str | None = Field(None, description="or a run of params.yaml's `runs`")
    set: list[str] = Field(default=[], description="fixed KEY=VALUE overrides for every trial")
    study: str | None = Field(None, description="the Optuna study's name; default: file name")
    objective: ObjectiveConfig = ObjectiveConfig()
    space: dict[str, Param] = Field(min_length=1, description="KEY.PATH -> distribution")
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    trials: int | None = Field(20, ge=1, description="trials to finish (complete or pruned)")
    timeout: float | None = Field(None, gt=0, description="seconds; no new trial after it")
    parallel: int = Field(1, ge=1, le=1024, description="trials at once (Ray tasks)")
    cpus_per_trial: float = Field(1.0, gt=0, description="each trial's CPUs and torch threads")
    storage: str | None = Field(None, description="Optuna storage; default sqlite <root>/optuna.db")
    heartbeat: int = Field(
        5,
        ge=1,
        le=3600,
        description="seconds between a running trial's heartbeats; a trial silent for three is "
        "failed and retried with the same parameters",
    )
    register_best: bool = Field(True, description="register the best trial's model (champion gate)")

    @model_validator(mode="after")
    def _budget(self) -> SweepConfig:
        if self.trials is None and self.timeout is None:
            raise ValueError("give a budget: trials, timeout, or both")
        if self.experiment and self.run:
            raise ValueError("give experiment or run, not both")
        if self.storage and self.storage.startswith("journal:"):
            raise ValueError(
                "storage: Optuna 5's journal storage has no heartbeat, so a killed trial could "
                "not be found and retried; use sqlite:///PATH (one machine) or "
                "postgresql://USER@HOST/DB (many)"
            )
        return self


class SweepFile(StrictModel):
    sweep: SweepConfig
