"""The benchmarks' smoke mode on the test cluster: each runs for real, briefly, and writes the figures it promises.
Figures themselves are not judged here (benchmarks are not timed tests); their presence and sanity are."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from orchestrator.train.timeline import PHASES

# Not in the default run (pyproject addopts): about 6 minutes, beyond CI's budget. Run with: pytest -m benchmarks
pytestmark = [pytest.mark.integration, pytest.mark.benchmarks]
NAMES = ("overhead", "scaling", "zero_memory", "activation_memory", "lora_memory", "model_parallel", "first_step", "mfu")


@pytest.fixture(scope="module")
def smoke(cluster, tmp_path_factory):
    """Runs these benchmarks' smoke mode once, through the one command users run."""
    results = tmp_path_factory.mktemp("benchmarks")
    env = cluster.env | {"RAY_API_SERVER_ADDRESS": cluster.dashboard, "BENCHMARK_RESULTS": str(results)}
    command = [sys.executable, "-m", "benchmarks.run_all", "--smoke", "--only", *NAMES]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "## Time to first step" in (results / "README.md").read_text()
    return {name: json.loads((results / f"{name}.json").read_text()) for name in NAMES}


def test_overhead_compares_the_job_with_bare_pytorch(smoke):
    overhead = smoke["overhead"]
    assert overhead["bare_pytorch_tokens_per_s"] > 0 and overhead["orchestrator_tokens_per_s"] > 0
    assert overhead["ratio"] == pytest.approx(overhead["orchestrator_tokens_per_s"] / overhead["bare_pytorch_tokens_per_s"])
    assert overhead["orchestrator_flops_per_s"] == pytest.approx(overhead["orchestrator_tokens_per_s"] * overhead["model_flops_per_token"], rel=0.5)


def test_scaling_splits_step_time(smoke):
    runs = smoke["scaling"]["runs"]
    assert set(runs) == {"1 worker", "2 workers"}
    for run in runs.values():
        assert run["samples_per_s"] > 0
        assert 0 <= run["data_wait_fraction"] < 1 and 0 <= run["allreduce_fraction"] < 1
    assert runs["1 worker"]["allreduce_fraction"] < runs["2 workers"]["allreduce_fraction"]  # nothing to reduce alone


def test_zero3_holds_less_model_state_than_zero0(smoke):
    runs = smoke["zero_memory"]["runs"]
    for run in runs.values():
        for peak in ("peak", "live_peak"):  # as jobs run, and with glibc's retention of freed memory off
            assert run[f"{peak}_bytes"] > run[f"{peak}_above_start_bytes"] > 0
        assert run["deepspeed_estimate_bytes"] > 0 and run["paper_bytes"] > 0
    assert runs["ZeRO-3"]["model_state_bytes"] < runs["ZeRO-0"]["model_state_bytes"]
    ratios = smoke["zero_memory"]["zero3_over_zero0"]
    assert ratios["model_state_bytes"] == pytest.approx(runs["ZeRO-3"]["model_state_bytes"] / runs["ZeRO-0"]["model_state_bytes"])


def test_activation_memory_compares_a_job_with_and_without_checkpointing(smoke):
    runs = smoke["activation_memory"]["runs"]
    assert set(runs) == {"activations-kept", "activations-checkpointed"}
    assert runs["activations-checkpointed"]["plan_activation_bytes"] < runs["activations-kept"]["plan_activation_bytes"]
    assert all(run["peak_above_start_bytes"] > 0 and run["tokens_per_s"] > 0 for run in runs.values())


def test_lora_memory_compares_adapters_with_full_fine_tuning(smoke):
    runs = smoke["lora_memory"]["runs"]
    assert set(runs) == {"full", "lora"} and runs["full"]["trainable_share"] == 1
    assert 0 < runs["lora"]["trainable_share"] < 0.1 and runs["lora"]["plan_trainable_share"] == pytest.approx(runs["lora"]["trainable_share"], rel=0.05)
    assert runs["lora"]["model_state_bytes"] < runs["full"]["model_state_bytes"] and runs["lora"]["plan_paper_bytes"] < runs["full"]["plan_paper_bytes"]


def test_first_step_is_broken_down_by_phase(smoke):
    median = smoke["first_step"]["seconds_warm_median"]
    assert set(PHASES) <= set(median) and median["submission"] > 0
    assert sum(median[phase] for phase in PHASES) == pytest.approx(median["submit_to_first_step"] - median["submission"], abs=0.5)


def test_mfu_reports_achieved_flops_and_says_why_no_mfu(smoke):
    [run] = smoke["mfu"]["runs"].values()
    assert run["achieved_tflops"] > 0 and run["tokens_per_s"] > 0
    assert "mfu" not in run and "GPU mode not run" in smoke["mfu"]["device"]


def test_model_parallel_compares_losses_and_memory_with_data_parallel(smoke):
    for run in smoke["model_parallel"].values():
        assert run["max_rel_loss_difference"] < 1e-3  # same seed and global batch
        assert 0.5 <= run["parameter_share"] < 1 and run["planned_parameter_share"] == pytest.approx(run["parameter_share"], abs=0.05)
        assert 0 < run["model_state_bytes"] < run["data_parallel_model_state_bytes"]


def test_data_scale_prepares_a_synthetic_corpus_and_opens_it_on_a_cache_hit(cluster, tmp_path):
    env = cluster.env | {"RAY_API_SERVER_ADDRESS": cluster.dashboard, "BENCHMARK_RESULTS": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.data_scale", "--smoke"], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [size] = json.loads((tmp_path / "data_scale.json").read_text())["sizes"]
    assert size["tokens"] > 0 and size["tokens_per_s"] > 0 and size["rows_read"] == size["miss"]["rows_read"] == size["hit"]["rows_read"]
    assert size["miss"]["driver_peak_rss_mb"] > size["miss"]["driver_peak_private_mb"] > 0 and 0 < size["miss"]["mean_busy_cores"] <= os.cpu_count()
    assert "loaded_s" in size["hit"] and "loaded_s" not in size["miss"]
    assert 0 <= size["training"]["mean_data_wait_fraction"] <= size["training"]["max_data_wait_fraction"] < 1
    feed = size["feed"]  # each worker reads its 1/N of the split, within what the epoch's last partial batch leaves out
    assert all(0.9 < feed[f"read_share_{workers}_workers"] * workers <= 1 for workers in (1, 2, 4))
    assert feed["steps_per_epoch"] > 10 and feed["resume_at_last_s"] > 0
