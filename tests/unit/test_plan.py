"""`orchestrator plan`: memory per worker for each ZeRO option, in agreement with DeepSpeed's estimators."""

import os
import re
import subprocess
import sys

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from helpers import tiny_job, write_job
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import load_job
from orchestrator.models.build import build_model
from orchestrator.train.plan import OPTIONS, _Vocabulary, deepspeed_estimate, model_size, option_name, paper_bytes, plan


@pytest.fixture
def job(corpus, tmp_path):
    return load_job(write_job(tmp_path / "job.yaml", tiny_job(corpus)))


def test_the_meta_model_counts_the_parameters_of_the_model_that_trains(job):
    size = model_size(job)
    model = build_model(job.model, job.task, _Vocabulary(job.data.tokenizer.vocab_size), [], seed=0)
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.largest_layer == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert (size.layers, size.hidden, size.heads) == (2, 64, 2)


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_estimates_are_deepspeeds_own(job, workers, offload):
    """plan writes DeepSpeed's estimator formulas out (importing DeepSpeed took seconds): the same numbers."""
    size = model_size(job)
    host, device = estimate_zero2_model_states_mem_needs(size.parameters, num_gpus_per_node=workers, cpu_offload=offload)
    assert deepspeed_estimate({"zero_stage": 2, "offload_optimizer": offload}, size, workers) == (device, host / workers)
    host, device = estimate_zero2_model_states_mem_needs(size.parameters, num_gpus_per_node=1, cpu_offload=offload)
    assert deepspeed_estimate({"zero_stage": 0, "offload_optimizer": offload}, size, workers) == (device, host)
    for offload_params in (False, True) if offload else (False,):
        host, device, _ = estimate_zero3_model_states_mem_needs(
            size.parameters,
            size.largest_layer,
            num_gpus_per_node=workers,
            cpu_offload=offload,
            cpu_offload_params=offload_params,
            zero_init=True,
        )
        option = {"zero_stage": 3, "offload_optimizer": offload, "offload_params": offload_params}
        assert deepspeed_estimate(option, size, workers) == (device, host / workers)


def test_option_names_say_the_stage_and_what_is_offloaded():
    assert list(OPTIONS) == [option_name(option) for option in OPTIONS.values()]
    assert option_name({"zero_stage": 3, "offload_optimizer": False, "offload_params": True}) == "ZeRO-3 + offload params"
    assert option_name({"zero_stage": 1, "offload_optimizer": True, "offload_params": False}) == "ZeRO-1 + offload optimizer"


def test_paper_bytes_divide_each_term_from_the_stage_that_partitions_it():
    assert paper_bytes(0, 1000, 4) == 16 * 1000
    assert paper_bytes(1, 1000, 4) == 4 * 1000 + 12 * 1000 / 4
    assert paper_bytes(2, 1000, 4) == 2 * 1000 + 14 * 1000 / 4
    assert paper_bytes(3, 1000, 4) == 16 * 1000 / 4


def test_the_recommendation_is_the_first_option_that_fits(job):
    size = model_size(job)
    options, choice = plan(job, size, memory_per_worker=2**40)
    assert choice == "ZeRO-0" and all(option.fits for option in options)
    needed = {option.name: option.needed_bytes for option in options}
    assert needed["ZeRO-3"] < needed["ZeRO-0"]
    _, choice = plan(job, size, memory_per_worker=(needed["ZeRO-3"] + needed["ZeRO-2"]) / 2)
    assert choice == "ZeRO-3"
    assert plan(job, size, memory_per_worker=1)[1] is None


def test_plan_command_prints_every_option_and_a_recommendation_without_importing_deepspeed(corpus, tmp_path):
    """In a process of its own: DeepSpeed (seconds to import, and a warning on machines without a GPU) stays out."""
    path = write_job(tmp_path / "cli.yaml", tiny_job(corpus))
    fits = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "orchestrator", "plan", str(path), "--memory-per-worker", "64"],
        capture_output=True,
        text=True,
        env=os.environ | {"NO_COLOR": "1"},
    )
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert all(name in fits.stdout for name in OPTIONS) and "recommended: ZeRO-0" in fits.stdout
    assert not re.search(r"\|\s+deepspeed(\.|$)", fits.stderr, re.MULTILINE)  # stderr: the imports, one a line
    assert "Setting accelerator" not in fits.stdout + fits.stderr  # DeepSpeed's warning where it finds no GPU (stdout)


@pytest.mark.parametrize(
    ("settings", "memory", "expected"),
    [
        (["deepspeed.zero_stage=2"], "64", "your job: ZeRO-2 (fits, "),
        (["deepspeed.zero_stage=1", "deepspeed.offload_optimizer=true"], "64", "your job: ZeRO-1 + offload optimizer (fits, "),
        (["deepspeed.zero_stage=3"], "0.0001", "your job: ZeRO-3 (does not fit, "),
    ],
)
def test_plan_shows_the_jobs_own_option_beside_the_recommendation(corpus, tmp_path, settings, memory, expected):
    path = write_job(tmp_path / "own.yaml", tiny_job(corpus))
    overrides = [argument for setting in settings for argument in ("--set", setting)]
    result = CliRunner().invoke(app, ["plan", str(path), *overrides, "--memory-per-worker", memory], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    own, recommended = result.stdout.splitlines()[-2:]
    assert own.startswith(expected) and own.endswith(" per worker)")
    assert recommended.startswith("recommended: " + ("ZeRO-0" if memory == "64" else "none fits"))


def test_model_parallel_plans_count_the_busiest_worker_and_shard_over_replicas(corpus, tmp_path):
    """Pipeline: the largest stage of DeepSpeed's balanced partition (the tied embedding on both ends), ZeRO 0-1.
    Tensor: linear layers split, embeddings whole, ZeRO 0-2 over the data-parallel replicas only."""
    path = write_job(tmp_path / "job.yaml", tiny_job(corpus))
    whole = model_size(load_job(path))
    pipeline = load_job(path, ["parallelism.pipeline=2"])
    size = model_size(pipeline)
    assert size.parameters == whole.parameters and whole.parameters / 2 < size.worker_parameters < whole.parameters
    options, _ = plan(pipeline, size, memory_per_worker=2**40)
    assert [option.name for option in options] == ["ZeRO-0", "ZeRO-1"]
    assert options[0].paper_bytes == paper_bytes(0, size.worker_parameters, 1)

    tensor = load_job(path, ["model.family=llama", "parallelism.tensor=2", "scaling.num_workers=4"])
    size = model_size(tensor)
    model = build_model(tensor.model, tensor.task, _Vocabulary(tensor.data.tokenizer.vocab_size), [], seed=0)
    embeddings = model.model.embed_tokens.weight.numel()
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    assert size.worker_parameters == embeddings + norms + (size.parameters - embeddings - norms) // 2
    options, _ = plan(tensor, size, memory_per_worker=2**40)
    assert "ZeRO-3" not in {option.name for option in options}
    assert options[1].paper_bytes == paper_bytes(1, size.worker_parameters, 2)  # sharded over 2 replicas, not 4 workers
