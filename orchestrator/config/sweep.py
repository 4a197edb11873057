"""The sweep file's schema: a base job, the keys to search and how, and what to optimise.

A sweep is validated like a job before anything starts: every searched key must be a key of the job schema,
and every value a distribution can take must give a valid job (load.py checks that with the job's own models).
Nothing here imports torch or ray.
"""

import math
from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from orchestrator.config.job import Section
from orchestrator.config.names import Name

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")
# Sections a trial may vary. Data is prepared once for the whole sweep, and scaling, checkpoint and tracking
# describe where and how trials run, so those stay the base job's.
SEARCHABLE_SECTIONS = ("model", "train", "deepspeed")


class Distribution(Section):
    """Exactly one of the keys, e.g. `{loguniform: [1e-5, 1e-2]}`."""

    choice: list[Any] | None = Field(None, min_length=1, description="Sample one of the values.")
    grid: list[Any] | None = Field(None, min_length=1, description="Try every value (a Tune grid search).")
    uniform: tuple[float, float] | None = Field(None, description="[low, high]")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], both > 0, sampled in log space.")
    randint: tuple[int, int] | None = Field(None, description="[low, high): an integer, high excluded.")
    quniform: tuple[float, float, float] | None = Field(None, description="[low, high, q]: uniform rounded to q.")

    @model_validator(mode="after")
    def _one_kind_with_sane_bounds(self):
        given = [kind for kind in DISTRIBUTIONS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ValueError(f"{'|'.join(DISTRIBUTIONS)}: give exactly one distribution (got {given or 'none'})")
        kind = given[0]
        if kind in ("uniform", "loguniform", "randint", "quniform"):
            low, high = getattr(self, kind)[:2]
            if not low < high:
                raise ValueError(f"{kind}: low must be below high (got {list(getattr(self, kind))})")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"loguniform: bounds must be > 0 (got {list(self.loguniform)})")
            if kind == "quniform" and not 0 < self.quniform[2] <= high - low:
                raise ValueError(f"quniform: q must be > 0 and fit between low and high (got {list(self.quniform)})")
        return self

    @property
    def kind(self) -> str:
        return next(kind for kind in DISTRIBUTIONS if getattr(self, kind) is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def extremes(self) -> list[Any]:
        """Every value the distribution can take, or for ranges the two ends (job checks are range checks)."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        if self.kind == "randint":
            return [self.randint[0], self.randint[1] - 1]
        if self.kind == "quniform":
            low, high, q = self.quniform
            return [math.ceil(low / q) * q, math.floor(high / q) * q]
        return list(self.args)


class SearchConfig(Section):
    name: Literal["random", "grid", "optuna", "hyperopt", "bayesopt"] = Field(
        "random", description="random/grid: Tune's variant generator; optuna (TPE), hyperopt, bayesopt: model-based."
    )


class SchedulerConfig(Section):
    name: Literal["fifo", "asha", "pbt", "pb2"] = Field("fifo", description="Trial scheduler.")
    grace_period: PositiveInt | None = Field(None, description="asha: steps before a trial can be stopped; default eval_every.")
    reduction_factor: float = Field(2.0, gt=1, description="asha: keep 1/reduction_factor of trials at each rung.")
    perturbation_interval: PositiveInt | None = Field(
        None, description="pbt/pb2: steps between exploit/explore; a multiple of train.eval_every; default eval_every."
    )
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="pbt/pb2: share of trials exploited / exploiting.")
    resample_probability: float = Field(0.25, ge=0, le=1, description="pbt: chance to resample instead of perturbing.")

    @model_validator(mode="after")
    def _own_options(self):
        foreign = {
            "fifo": ("grace_period", "reduction_factor", "perturbation_interval", "quantile_fraction", "resample_probability"),
            "asha": ("perturbation_interval", "quantile_fraction", "resample_probability"),
            "pbt": ("grace_period", "reduction_factor"),
            "pb2": ("grace_period", "reduction_factor", "resample_probability"),
        }[self.name]
        if clash := self.changed_from_default(*foreign):
            raise ValueError(f"{clash[0]}: not an option of the {self.name} scheduler")
        return self

    def perturbation_steps(self, eval_every: int) -> int:
        """pbt/pb2: steps between exploit/explore rounds."""
        return self.perturbation_interval or eval_every


class SweepConfig(Section):
    """A sweep: trials of the base job with values drawn from `search_space`, run by Ray Tune."""

    name: Name | None = Field(
        None, description="Names the sweep (default: the file's name); the same sweep submitted again resumes."
    )
    base: str = Field(description="The job file every trial starts from, relative to the sweep file.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted job keys set for every trial, e.g. train.max_steps: 100."
    )
    search_space: dict[str, Distribution] = Field(
        min_length=1, description="Dotted job key -> distribution, e.g. train.optimizer.lr: {loguniform: [1e-5, 1e-2]}."
    )
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    metric: str = Field("eval/loss", description="Reported metric the sweep optimises.")
    mode: Literal["min", "max"] = "min"
    num_samples: PositiveInt = Field(4, description="Trials to sample (each grid point is tried num_samples times).")
    max_concurrent_trials: PositiveInt | None = Field(
        None, description="Upper bound on trials at once; the cluster's CPUs/GPUs and the job's scaling set the rest."
    )
    time_budget_s: PositiveFloat | None = Field(None, description="Stop starting and running trials after this long.")
    seed: int = Field(0, description="Seed of the search algorithm and the scheduler.")

    @model_validator(mode="after")
    def _searchable(self):
        for key, distribution in self.search_space.items():
            if key.split(".")[0] not in SEARCHABLE_SECTIONS:
                raise ValueError(f"search_space.{key}: only keys of {', '.join(SEARCHABLE_SECTIONS)} can be searched")
        kinds = {key: distribution.kind for key, distribution in self.search_space.items()}
        search = self.search.name
        if search == "grid" and (sampled := [key for key, kind in kinds.items() if kind not in ("grid", "choice")]):
            raise ValueError(f"search: grid enumerates values; search_space.{sampled[0]} is a {kinds[sampled[0]]} range")
        if search in ("optuna", "hyperopt", "bayesopt") and (grids := [key for key, kind in kinds.items() if kind == "grid"]):
            raise ValueError(f"search: {search} samples values itself and cannot take grid (search_space.{grids[0]}); use choice")
        if self.scheduler.name == "pbt" and (grids := [key for key, kind in kinds.items() if kind == "grid"]):
            raise ValueError(f"scheduler: pbt mutates values by sampling and cannot take grid (search_space.{grids[0]}); use choice")
        if search == "bayesopt" and (other := [key for key, kind in kinds.items() if kind != "uniform"]):
            raise ValueError(f"search: bayesopt searches uniform ranges only (search_space.{other[0]} is {kinds[other[0]]})")
        if self.scheduler.name == "pb2" and (other := [key for key, kind in kinds.items() if kind not in ("uniform", "loguniform")]):
            raise ValueError(f"scheduler: pb2 perturbs continuous ranges only (search_space.{other[0]} is {kinds[other[0]]})")
        return self
