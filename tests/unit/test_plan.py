"""`orchestrator plan`: memory per worker for each ZeRO option, in agreement with DeepSpeed's estimators."""

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from helpers import run_cli, tiny_job, write_job

from orchestrator.config import load_job
from orchestrator.models.build import build_model
from orchestrator.train.plan import OPTIONS, _Vocabulary, deepspeed_estimate, model_size, paper_bytes, plan


@pytest.fixture
def job(corpus, tmp_path):
    return load_job(write_job(tmp_path / "job.yaml", tiny_job(corpus)))


def test_the_meta_model_counts_the_parameters_of_the_model_that_trains(job):
    size = model_size(job)
    model = build_model(job.model, job.task, _Vocabulary(job.data.tokenizer.vocab_size), [], seed=0)
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.largest_layer == max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert (size.layers, size.hidden, size.heads) == (2, 64, 2)


def test_estimates_are_deepspeeds_own(job):
    size, workers = model_size(job), job.scaling.num_workers
    _, zero2_device = estimate_zero2_model_states_mem_needs(size.parameters, num_gpus_per_node=workers, cpu_offload=False)
    _, zero3_device, _ = estimate_zero3_model_states_mem_needs(size.parameters, size.largest_layer, num_gpus_per_node=workers, cpu_offload=False, cpu_offload_params=False)
    assert deepspeed_estimate(OPTIONS["ZeRO-2"], size, workers)[0] == zero2_device
    assert deepspeed_estimate(OPTIONS["ZeRO-3"], size, workers)[0] == zero3_device


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


def test_plan_command_prints_every_option_and_a_recommendation(job, corpus, tmp_path, monkeypatch):
    path = write_job(tmp_path / "cli.yaml", tiny_job(corpus))
    monkeypatch.setenv("NO_COLOR", "1")
    run = lambda *args: run_cli("plan", str(path), *args, hard_stop_s=60)  # noqa: E731
    fits = run("--memory-per-worker", "64")
    assert fits.code == 0 and not fits.crash, str(fits)
    assert all(name in fits.stdout for name in OPTIONS) and "recommended: ZeRO-0" in fits.stdout
    assert "recommended: none fits" in run("--memory-per-worker", "0.0001").stdout


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
