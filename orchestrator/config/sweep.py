"""The sweep file's schema: a base job, the keys to search and how, and what to optimise.

A sweep is validated like a job before anything starts: every searched key must be a key of the job schema,
and every value a distribution can take must give a valid job (load.py checks that with the job's own models).
Nothing here imports torch or ray.
"""

import math
from typing import Any, Literal

from pydantic import Field, model_validator

from orchestrator.config.job import MAX_SECONDS, MAX_STEPS, Int, PathText, Real, Section, Seed
from orchestrator.config.names import Name

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform")
# Sections a trial may vary. Data is prepared once for the whole sweep, and scaling, checkpoint and tracking
# describe where and how trials run, so those stay the base job's.
SEARCHABLE_SECTIONS = ("model", "train", "deepspeed")
MAX_TRIALS = 10_000  # trials of one sweep, grid points x num_samples included: Tune keeps every one in memory
MAX_SEARCHED_VALUES = 1000  # choice and grid values of all keys together: each is validated as a job beforehand
MAX_SEARCHED_KEYS = 100


class Distribution(Section):
    """Exactly one of the keys, e.g. `{loguniform: [1e-5, 1e-2]}`."""

    choice: list[Any] | None = Field(None, min_length=1, max_length=MAX_SEARCHED_VALUES, description="Sample one of the values.")
    grid: list[Any] | None = Field(None, min_length=1, max_length=MAX_SEARCHED_VALUES, description="Try every value (a Tune grid search).")
    uniform: tuple[Real, Real] | None = Field(None, description="[low, high]")
    loguniform: tuple[Real, Real] | None = Field(None, description="[low, high], both > 0, sampled in log space.")
    randint: tuple[Int, Int] | None = Field(None, description="[low, high): an integer, high excluded.")
    quniform: tuple[Real, Real, Real] | None = Field(None, description="[low, high, q]: uniform rounded to q.")

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
    grace_period: Int | None = Field(None, gt=0, le=MAX_STEPS, description="asha: steps before a trial can be stopped; default eval_every.")
    reduction_factor: Real = Field(2.0, gt=1, le=100, description="asha: keep 1/reduction_factor of trials at each rung.")
    perturbation_interval: Int | None = Field(
        None, gt=0, le=MAX_STEPS, description="pbt/pb2: steps between exploit/explore; a multiple of train.eval_every; default eval_every."
    )
    quantile_fraction: Real = Field(0.25, gt=0, le=0.5, description="pbt/pb2: share of trials exploited / exploiting.")
    resample_probability: Real = Field(0.25, ge=0, le=1, description="pbt: chance to resample instead of perturbing.")
    synch: bool = Field(
        False,
        description="pbt/pb2: every trial waits for the others at each perturbation step, so the weakest always exploit the "
        "strongest; default: each trial compares itself with the results already in when it gets there.",
    )

    @model_validator(mode="after")
    def _own_options(self):
        foreign = {
            "fifo": ("grace_period", "reduction_factor", "perturbation_interval", "quantile_fraction", "resample_probability", "synch"),
            "asha": ("perturbation_interval", "quantile_fraction", "resample_probability", "synch"),
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

    name: Name | None = Field(None, description="Names the sweep (default: the file's name); the same sweep submitted again resumes.")
    base: PathText = Field(description="The job file every trial starts from, relative to the sweep file.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted job keys set for every trial, e.g. train.max_steps: 100.")
    search_space: dict[str, Distribution] = Field(
        min_length=1, max_length=MAX_SEARCHED_KEYS, description="Dotted job key -> distribution, e.g. train.optimizer.lr: {loguniform: [1e-5, 1e-2]}."
    )
    search: SearchConfig = SearchConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    metric: str = Field("eval/loss", description="Reported metric the sweep optimises.")
    mode: Literal["min", "max"] = "min"
    num_samples: Int = Field(4, gt=0, le=MAX_TRIALS, description="Trials to sample (each grid point is tried num_samples times).")
    max_concurrent_trials: Int | None = Field(
        None, gt=0, le=MAX_TRIALS, description="Upper bound on trials at once; the cluster's CPUs/GPUs and the job's scaling set the rest."
    )
    time_budget_s: Real | None = Field(None, gt=0, le=MAX_SECONDS, description="Stop starting and running trials after this long.")
    seed: Seed = Field(0, description="Seed of the search algorithm and the scheduler.")

    @model_validator(mode="after")
    def _searchable(self):
        for key in self.search_space:
            if key.split(".")[0] not in SEARCHABLE_SECTIONS:
                raise ValueError(f"search_space.{key}: only keys of {', '.join(SEARCHABLE_SECTIONS)} can be searched")
        kinds = {key: distribution.kind for key, distribution in self.search_space.items()}
        values = sum(len(d.args) for d in self.search_space.values() if d.kind in ("choice", "grid"))
        if values > MAX_SEARCHED_VALUES:
            raise ValueError(f"search_space: {values:,} choice and grid values in all; at most {MAX_SEARCHED_VALUES:,}")
        trials = self.num_samples * math.prod(len(d.grid) for d in self.search_space.values() if d.kind == "grid")
        if trials > MAX_TRIALS:
            raise ValueError(f"num_samples: {trials:,} trials (grid points x num_samples); at most {MAX_TRIALS:,}")
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
