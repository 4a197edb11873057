"""Sweep files: validated like jobs against the job schema, turned into Tune objects by registries."""

import itertools
import time

import helpers
import psutil
import pytest
import yaml
from helpers import REPO, run_cli, tiny_job, write_job
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pb2 import PB2
from ray.tune.search import BasicVariantGenerator, Searcher

from orchestrator.config import UserError
from orchestrator.config.load import load_sweep
from orchestrator.config.sweep import Distribution
from orchestrator.tune import sweep
from orchestrator.tune.space import SCHEDULERS, SEARCHERS, param_space, search_algorithm, trial_scheduler, trials_at_once


def write_sweep(tmp_path, corpus, job_sections=None, **sweep) -> str:
    return helpers.write_sweep(tmp_path, tiny_job(corpus, **(job_sections or {})), **sweep)


def test_example_sweeps_validate(corpus, tmp_path):
    for path in (REPO / "jobs" / "sweeps").glob("*.yaml"):
        sweep = yaml.safe_load(path.read_text())
        base = yaml.safe_load((path.parent / sweep["base"]).read_text())
        base["data"]["paths"] = [str(corpus)]  # the examples read an installed corpus
        write_job(tmp_path / "base.yaml", base)
        (tmp_path / path.name).write_text(yaml.safe_dump(sweep | {"base": "base.yaml"}))
        loaded = load_sweep(tmp_path / path.name)
        assert loaded.name == path.stem and set(param_space(loaded.config)) == set(sweep["search_space"])


def test_trial_job_switches_schedule_and_checkpoints_at_evaluations(corpus, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, corpus, overrides={"train.eval_every": 4}))
    assert sweep.base_job.train.schedule.name == "cosine" and sweep.base_job.train.eval_every == 4
    job = sweep.trial_job({"train.optimizer.lr": 0.002, "train.schedule.name": "exponential"})
    assert job.train.optimizer.lr == 0.002
    assert job.train.schedule.name == "exponential" and job.train.schedule.warmup_steps == 2  # kept from the base
    assert job.checkpoint.every_steps == 4  # every result Tune sees carries a checkpoint


def test_set_applies_to_the_base_job_after_the_sweeps_overrides(corpus, tmp_path):
    path = write_sweep(tmp_path, corpus, overrides={"train.eval_every": 4, "train.max_steps": 16})
    sweep = load_sweep(path, ["train.max_steps=12", "model.dropout=0.2"])
    assert sweep.base_job.train.max_steps == 12 and sweep.base_job.train.eval_every == 4  # --set wins, the rest stays
    assert sweep.trial_job({"train.optimizer.lr": 0.002}).model.dropout == 0.2  # and every trial gets it
    with pytest.raises(UserError, match="job.yaml: train.max_steps"):  # checked like the file's own values
        load_sweep(path, ["train.max_steps=-1"])
    with pytest.raises(UserError, match="--set train.max_steps: expected"):
        load_sweep(path, ["train.max_steps"])


def test_distribution_extremes():
    assert Distribution(loguniform=(1e-4, 1e-2)).extremes() == [1e-4, 1e-2]
    assert Distribution(randint=(1, 5)).extremes() == [1, 4]
    assert Distribution(quniform=(0.05, 0.95, 0.1)).extremes() == pytest.approx([0.1, 0.9])
    assert Distribution(grid=["a", "b"]).extremes() == ["a", "b"]


BAD_SWEEPS = [
    ("unknown searched key", {"search_space": {"train.optimizer.lrr": {"choice": [0.1]}}}, "search_space.train.optimizer.lrr: not a key of the job"),
    ("unsearchable section", {"search_space": {"data.seq_len": {"choice": [16, 32]}}}, "search_space.data.seq_len: only keys of model, train, deepspeed"),
    (
        "loguniform bound",
        {"search_space": {"train.optimizer.lr": {"loguniform": [0, 0.1]}}},
        "search_space.train.optimizer.lr.loguniform: bounds must be > 0 (got [0.0, 0.1])",
    ),
    ("reversed bounds", {"search_space": {"train.optimizer.lr": {"uniform": [0.1, 0.01]}}}, "uniform: low must be below high"),
    ("two kinds", {"search_space": {"train.optimizer.lr": {"uniform": [0.01, 0.1], "choice": [0.1]}}}, "give exactly one distribution"),
    (
        "value the job refuses",
        {"search_space": {"deepspeed.zero_stage": {"choice": [0, 7]}}},
        "search_space.deepspeed.zero_stage: 7 makes the job invalid: deepspeed.zero_stage: must be 0, 1, 2 or 3",
    ),
    (
        "range the job refuses",
        {"search_space": {"train.optimizer.lr": {"uniform": [-0.1, 0.1]}}},
        "search_space.train.optimizer.lr: -0.1 makes the job invalid",
    ),
    ("warmup past the end", {"search_space": {"train.schedule.warmup_steps": {"grid": [0, 50]}}}, "schedule.warmup_steps: 50 exceeds max_steps (20)"),
    (
        "grid with optuna",
        {"search": {"name": "optuna"}, "search_space": {"train.optimizer.lr": {"grid": [0.1, 0.01]}}},
        "search: optuna samples values itself and cannot take grid",
    ),
    ("range with grid search", {"search": {"name": "grid"}}, "search: grid enumerates values; search_space.train.optimizer.lr is a loguniform range"),
    ("bayesopt log scale", {"search": {"name": "bayesopt"}}, "search: bayesopt searches uniform ranges only"),
    (
        "pb2 on a choice",
        {"scheduler": {"name": "pb2"}, "search_space": {"train.schedule.name": {"choice": ["linear"]}}},
        "scheduler: pb2 perturbs continuous ranges only",
    ),
    ("metric never reported", {"metric": "eval/accuracy"}, "metric: the causal_lm task reports train/loss, eval/loss, eval/perplexity (got 'eval/accuracy')"),
    ("asha option on pbt", {"scheduler": {"name": "pbt", "grace_period": 5}}, "scheduler.grace_period: not an option of the pbt scheduler"),
    ("pbt option on asha", {"scheduler": {"name": "asha", "synch": True}}, "scheduler.synch: not an option of the asha scheduler"),
    ("unknown sweep key", {"trials": 3}, "trials: unknown key"),
    ("unknown override", {"overrides": {"train.colour": "red"}}, "overrides.train.colour: not a key of the job"),
]


@pytest.mark.parametrize("name, sweep, message", BAD_SWEEPS, ids=[case[0] for case in BAD_SWEEPS])
def test_bad_sweeps_name_the_key(corpus, tmp_path, name, sweep, message):
    with pytest.raises(UserError, match=None) as err:
        load_sweep(write_sweep(tmp_path, corpus, **sweep))
    assert message in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_pbt_needs_checkpoints_and_aligned_interval(corpus, tmp_path):
    no_checkpoints = {"checkpoint": {"every_steps": None}}
    with pytest.raises(UserError, match="scheduler: pbt restarts trials from checkpoints"):
        load_sweep(write_sweep(tmp_path, corpus, no_checkpoints, scheduler={"name": "pbt"}))
    with pytest.raises(UserError, match=r"perturbation_interval: 15 is not a multiple of train.eval_every \(10\)"):
        load_sweep(write_sweep(tmp_path, corpus, scheduler={"name": "pbt", "perturbation_interval": 15}))


def test_validate_cli_takes_sweeps(corpus, tmp_path):
    good = write_sweep(tmp_path, corpus)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": "job.yaml", "search_space": {"train.nope": {"choice": [1]}}}))
    for path, code in ((good, 0), (bad, 2)):
        out = run_cli("validate", str(path))
        assert out.code == code and not out.crash, str(out)
    assert "search_space.train.nope: not a key of the job" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("search", list(SEARCHERS))
@pytest.mark.parametrize("scheduler", list(SCHEDULERS))
def test_every_search_and_scheduler_builds(corpus, tmp_path, search, scheduler):
    space = {"train.optimizer.lr": {"uniform": [1e-3, 1e-2]}}
    if search == "grid":
        space = {"train.optimizer.lr": {"choice": [1e-3, 1e-2]}}
    if search != "bayesopt" and scheduler != "pb2":
        space["train.schedule.name"] = {"choice": ["constant", "linear"]}
    path = write_sweep(tmp_path, corpus, search={"name": search}, scheduler={"name": scheduler}, search_space=space)
    if search == "grid" and scheduler == "pb2":  # one enumerates values, the other needs ranges
        with pytest.raises(UserError, match="pb2 perturbs continuous ranges only"):
            load_sweep(path)
        return
    sweep = load_sweep(path)
    expected = {"fifo": FIFOScheduler, "asha": ASHAScheduler, "pbt": PopulationBasedTraining, "pb2": PB2}[scheduler]
    assert isinstance(trial_scheduler(sweep.config, sweep.base_job, 20), expected)
    algorithm = search_algorithm(sweep.config, max_concurrent=2)
    if search in ("random", "grid"):
        assert isinstance(algorithm, BasicVariantGenerator) and algorithm.max_concurrent == 2
    else:
        assert isinstance(algorithm, Searcher)  # Tune wraps it in a ConcurrencyLimiter


def test_grid_becomes_a_tune_grid_search(corpus, tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, corpus, search={"name": "grid"}, search_space={"train.schedule.name": {"grid": ["linear", "cosine"]}}))
    assert param_space(sweep.config) == {"train.schedule.name": tune.grid_search(["linear", "cosine"])}


def test_concurrency_follows_cluster_and_job(corpus, tmp_path):
    job = load_sweep(write_sweep(tmp_path, corpus)).base_job  # 2 workers x 1 CPU
    assert trials_at_once({"CPU": 2}, job, None) == 1
    assert trials_at_once({"CPU": 8}, job, None) == 4
    assert trials_at_once({"CPU": 8}, job, 3) == 3
    on_gpus = job.model_copy(update={"scaling": job.scaling.model_copy(update={"use_gpu": True})})
    assert trials_at_once({"CPU": 8, "GPU": 2}, on_gpus, None) == 1


@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_synch_makes_every_trial_wait_at_each_perturbation_step(corpus, tmp_path, scheduler):
    space = {"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}
    for synch in (False, True):
        sweep = load_sweep(write_sweep(tmp_path, corpus, scheduler={"name": scheduler, "synch": synch}, search_space=space))
        assert trial_scheduler(sweep.config, sweep.base_job, 20)._synch is synch


@pytest.mark.parametrize("scheduler", ["pbt", "pb2"])
def test_no_trial_is_perturbed_at_its_last_step(corpus, tmp_path, scheduler):
    """An exploit there would restart the trial from another's checkpoint only for it to end at once."""
    sweep = load_sweep(write_sweep(tmp_path, corpus, scheduler={"name": scheduler}, search_space={"train.optimizer.lr": {"loguniform": [1e-4, 1e-2]}}))
    population = trial_scheduler(sweep.config, sweep.base_job, 20)
    population.set_search_properties(sweep.config.metric, sweep.config.mode)
    last = {"step": 20, sweep.config.metric: 1.0}
    assert population.on_trial_result(None, "a trial", last) == TrialScheduler.CONTINUE
    with pytest.raises(KeyError):  # before it, the result is PBT's, which was never told of this trial
        population.on_trial_result(None, "a trial", last | {"step": 19})


def test_a_trial_starts_with_its_process_and_a_later_trial_of_the_process_when_it_starts(monkeypatch):
    """Tune runs the next trial in a finished trial's process: only the process's first trial counts its start."""
    monkeypatch.setattr(sweep, "TRIALS_IN_THIS_PROCESS", itertools.count())
    assert sweep.trial_start() == psutil.Process().create_time()
    before = time.time()
    assert before <= sweep.trial_start() <= time.time()
