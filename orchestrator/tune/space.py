"""The sweep file -> Ray Tune objects: search space, search algorithm and trial scheduler, each from a registry.

Trial results are indexed by the training step (`time_attr="step"`), so ASHA's grace period and PBT's
perturbation interval are in optimizer steps, like everything else in a job file.
"""

from collections.abc import Callable
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.bayesopt import BayesOptSearch
from ray.tune.search.hyperopt import HyperOptSearch
from ray.tune.search.optuna import OptunaSearch

from orchestrator.config.job import JobConfig
from orchestrator.config.sweep import Distribution, SweepConfig

TIME_ATTR = "step"

DOMAINS: dict[str, Callable[[Any], Any]] = {
    "choice": tune.choice,
    "grid": tune.grid_search,
    "uniform": lambda bounds: tune.uniform(*bounds),
    "loguniform": lambda bounds: tune.loguniform(*bounds),
    "randint": lambda bounds: tune.randint(*bounds),
    "quniform": lambda bounds: tune.quniform(*bounds),
}


def tune_domain(distribution: Distribution) -> Any:
    return DOMAINS[distribution.kind](distribution.args)


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Flat {dotted job key: Tune domain}; a trial's config is then {dotted key: value}."""
    return {key: tune_domain(distribution) for key, distribution in sweep.search_space.items()}


# Tune caps the trials a model-based Searcher suggests at max_concurrent_trials itself; the variant generator
# (random and grid) must be given the cap.
SEARCHERS: dict[str, Callable[[SweepConfig, int], Searcher | BasicVariantGenerator]] = {
    "random": lambda sweep, at_once: BasicVariantGenerator(max_concurrent=at_once, random_state=sweep.seed),
    "grid": lambda sweep, at_once: BasicVariantGenerator(max_concurrent=at_once, random_state=sweep.seed),
    "optuna": lambda sweep, at_once: OptunaSearch(seed=sweep.seed),
    "hyperopt": lambda sweep, at_once: HyperOptSearch(random_state_seed=sweep.seed),
    "bayesopt": lambda sweep, at_once: BayesOptSearch(random_state=sweep.seed),
}


def search_algorithm(sweep: SweepConfig, max_concurrent: int) -> Searcher | BasicVariantGenerator:
    return SEARCHERS[sweep.search.name](sweep, max_concurrent)


class _NoPerturbationAtTheEnd:
    """PBT and PB2 without an exploit at a trial's last step: the exploiting trial would restart from the other's
    checkpoint only to end at once, having trained nothing on its mutated values (seen: a 20-step sweep perturbing
    every 10 steps restarted its weaker trial at step 20)."""

    def __init__(self, *, total_steps: int, **options):
        self.total_steps = total_steps
        super().__init__(**options)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(TIME_ATTR, 0) >= self.total_steps:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


class _PopulationBasedTraining(_NoPerturbationAtTheEnd, PopulationBasedTraining):
    pass


class _PB2(_NoPerturbationAtTheEnd, PB2):
    pass


def _pbt(sweep: SweepConfig, job: JobConfig, total_steps: int) -> TrialScheduler:
    return _PopulationBasedTraining(
        total_steps=total_steps,
        time_attr=TIME_ATTR,
        perturbation_interval=sweep.scheduler.perturbation_steps(job.train.eval_every),
        hyperparam_mutations=param_space(sweep),
        quantile_fraction=sweep.scheduler.quantile_fraction,
        resample_probability=sweep.scheduler.resample_probability,
        synch=sweep.scheduler.synch,
    )


def _pb2(sweep: SweepConfig, job: JobConfig, total_steps: int) -> TrialScheduler:
    return _PB2(
        total_steps=total_steps,
        time_attr=TIME_ATTR,
        perturbation_interval=sweep.scheduler.perturbation_steps(job.train.eval_every),
        hyperparam_bounds={key: list(dist.args) for key, dist in sweep.search_space.items()},
        quantile_fraction=sweep.scheduler.quantile_fraction,
        synch=sweep.scheduler.synch,
    )


SCHEDULERS: dict[str, Callable[[SweepConfig, JobConfig, int], TrialScheduler]] = {
    "fifo": lambda sweep, job, total_steps: FIFOScheduler(),
    "asha": lambda sweep, job, total_steps: ASHAScheduler(
        time_attr=TIME_ATTR,
        max_t=total_steps + 1,  # trials end themselves at total_steps; stopped at max_t they would be cut off in teardown
        grace_period=sweep.scheduler.grace_period or job.train.eval_every,
        reduction_factor=sweep.scheduler.reduction_factor,
    ),
    "pbt": _pbt,
    "pb2": _pb2,
}


def trial_scheduler(sweep: SweepConfig, job: JobConfig, total_steps: int) -> TrialScheduler:
    return SCHEDULERS[sweep.scheduler.name](sweep, job, total_steps)


def trials_at_once(cluster: dict[str, float], job: JobConfig, limit: int | None) -> int:
    """How many trials fit the cluster side by side: each trial holds its job's workers for its whole run."""
    fits = int(cluster.get("CPU", 0) // (job.scaling.num_workers * job.scaling.cpus_per_worker))
    if job.scaling.use_gpu:
        fits = min(fits, int(cluster.get("GPU", 0) // job.scaling.num_workers))
    return max(1, min(fits, limit or fits))
