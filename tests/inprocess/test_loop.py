"""The worker loop of a causal LM job, run in this process (local_mode.py): what it logs and when, when it evaluates,
the learning rates it trains with, what it reports to Ray and checkpoints, how exactly it resumes, and the model it
exports. One 20-step run is the reference; a second resumes it from its step-10 checkpoint."""

import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_job, write_corpus
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers import optimization as hf

from orchestrator.config.load import validate
from orchestrator.tracking.model import hf_directory
from orchestrator.train.checkpoint import TAG
from orchestrator.train.manifest import MANIFEST
from orchestrator.train.timeline import PHASES

from .local_mode import prepared_in_memory, train_in_process

STEPS, EVAL_EVERY, CHECKPOINT_EVERY = 20, 10, 5
SECTIONS = {
    "train": {"micro_batch_size": 8, "grad_accum_steps": 2, "schedule": {"name": "cosine", "warmup_steps": 3, "min_lr_ratio": 0.1}},
    "scaling": {"num_workers": 1},
    "checkpoint": {"every_steps": CHECKPOINT_EVERY},
    "deepspeed": {"zero_stage": 1},  # its optimizer state is a partition of its own in the checkpoint; ZeRO-0 has no grad norm
}
WORKER_PHASES = PHASES[PHASES.index("worker_processes") :]  # the driver's are marked by train/launch.py
PROBE = "the cat sees the red ball. a dog likes the green tree."


@pytest.fixture(scope="module")
def job(tmp_path_factory, tracking_uri):
    # A small corpus: an epoch of 13 steps, which the reference and the resumed run cross.
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), documents=300)
    return validate(tiny_job(corpus, tracking={"uri": tracking_uri, "experiment": "loop"}, **SECTIONS))


@pytest.fixture(scope="module")
def data(local_ray, job, tmp_path_factory):
    return prepared_in_memory(job, tmp_path_factory.mktemp("data"))


def logits_of_the_trained_module(worker) -> torch.Tensor:
    ids = torch.tensor([worker.tokenizer.encode(PROBE)])
    with torch.no_grad():
        return worker.engine.module.eval()(input_ids=ids).logits


@pytest.fixture(scope="module")
def reference(job, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    return train_in_process(job, data, tmp, "reference", look_at_export=logits_of_the_trained_module)


@pytest.fixture(scope="module")
def resumed(job, data, reference, tmp_path_factory):
    return train_in_process(job, data, tmp_path_factory.mktemp("resumed"), "resumed", initial_checkpoint=reference.checkpoint_at(10))


@pytest.fixture(scope="module")
def rank_1(job, data, tmp_path_factory):
    return train_in_process(job, data, tmp_path_factory.mktemp("rank-1"), "rank-1", as_rank=1)


def test_every_step_is_logged_with_throughput_memory_and_the_start_up_timeline(reference, job, data, tracking_uri):
    def history(key: str) -> dict[int, float]:
        return reference.history(tracking_uri, key)

    losses = history("train/loss")
    assert sorted(losses) == list(range(1, STEPS + 1)) and all(math.isfinite(loss) for loss in losses.values())
    assert sum(losses[step] for step in (18, 19, 20)) < 0.8 * sum(losses[step] for step in (1, 2, 3))
    for key in (
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "perf/flops_per_s",
        "memory/peak_bytes",
        "train/data_wait_fraction",
        "train/allreduce_fraction",
    ):
        assert sorted(history(key)) == list(range(1, STEPS + 1)), key
    epoch_steps = data.train_sequences // job.global_batch_size
    assert EVAL_EVERY < epoch_steps < STEPS  # the reference and the resumed run cross an epoch
    assert history("train/epoch") == {step: int(step > epoch_steps) for step in range(1, STEPS + 1)}
    assert not history("perf/mfu")  # no peak FLOPS known for a CPU

    metrics = MlflowClient(tracking_uri).get_run(reference.run_id).data.metrics
    startup = {key for key in metrics if key.startswith("time/startup/")}
    assert startup == {f"time/startup/{phase}_s" for phase in WORKER_PHASES}
    assert sum(metrics[key] for key in startup) == pytest.approx(metrics["time/first_step_s"], abs=0.01)
    assert metrics["perf/model_flops_per_token"] > 0
    # The model states' memory, in the run's second step: the first one made the optimizer states.
    memory = {key: history(key) for key in ("memory/at_start_bytes", "memory/model_state_bytes", "memory/parameter_share")}
    assert all(list(steps) == [1] for steps in memory.values()), memory
    assert 0 < memory["memory/at_start_bytes"][1] < metrics["memory/peak_bytes"] and memory["memory/parameter_share"][1] == 1
    assert memory["memory/model_state_bytes"][1] > 0


def test_evaluates_untrained_then_every_eval_every_steps_and_at_the_end(reference, tracking_uri):
    perplexity = reference.history(tracking_uri, "eval/perplexity")
    assert sorted(perplexity) == [0, EVAL_EVERY, STEPS]
    assert perplexity[STEPS] < perplexity[EVAL_EVERY] < perplexity[0]
    assert sorted(reference.history(tracking_uri, "eval/loss")) == [0, EVAL_EVERY, STEPS]


def test_trains_with_the_learning_rates_of_the_schedule_the_job_names(reference, job, tracking_uri):
    """Logged after each step: the rate the next step uses, as Hugging Face's own schedule gives it."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=job.train.optimizer.lr)
    schedule = hf.get_cosine_with_min_lr_schedule_with_warmup(optimizer, 3, STEPS, min_lr_rate=0.1)
    expected = {}
    for step in range(1, STEPS + 1):
        optimizer.step()
        schedule.step()
        expected[step] = schedule.get_last_lr()[0]
    assert reference.history(tracking_uri, "train/lr") == pytest.approx(expected, rel=1e-6)


def test_reports_to_ray_at_evaluation_and_checkpoint_steps_the_last_after_the_export(reference):
    assert [report.metrics["step"] for report in reference.reports] == [5, 10, 15, 20]
    assert [report.model_logged for report in reference.reports] == [False, False, False, True]
    for report in reference.reports:
        evaluated = report.metrics["step"] % EVAL_EVERY == 0
        assert {"train/loss", "train/lr"} <= report.metrics.keys()
        assert ("eval/perplexity" in report.metrics) is evaluated
        files = {path.name for path in report.checkpoint.iterdir()}
        assert {TAG, MANIFEST, "rng_rank0.pt"} <= files, files


def test_a_run_resumed_from_its_step_10_checkpoint_trains_exactly_as_the_uninterrupted_one(reference, resumed, tracking_uri):
    """Model, optimizer, learning-rate schedule, RNG (dropout) and data position, across the epoch at step 18."""
    assert any(line.startswith("resumed from step 10 (epoch 0) at lr ") for line in resumed.log), resumed.log
    for key in ("train/loss", "train/lr", "train/epoch"):
        continued = resumed.history(tracking_uri, key)
        assert sorted(continued) == list(range(11, STEPS + 1)), key
        assert continued == {step: reference.history(tracking_uri, key)[step] for step in continued}, key
    assert resumed.history(tracking_uri, "eval/loss") == {STEPS: reference.history(tracking_uri, "eval/loss")[STEPS]}
    assert [report.metrics["step"] for report in resumed.reports] == [15, 20]


def test_a_damaged_checkpoint_is_refused_naming_it_and_the_run_ends_failed_saying_why(job, data, reference, tracking_uri, tmp_path):
    """Its model states cut in half, as a full disk leaves them: the resumed run stops before its first step, and its
    MLflow run ends FAILED with the reason as its error tag (tracking/run.py)."""
    damaged = Path(shutil.copytree(reference.checkpoint_at(10), tmp_path / "damaged-checkpoint"))
    states = damaged / TAG / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
    with pytest.raises(Exception, match="refused"):
        train_in_process(job, data, tmp_path, "damaged", initial_checkpoint=damaged)
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("loop").experiment_id], "tags.mlflow.runName = 'damaged'")
    assert run.info.status == "FAILED"
    assert f"{damaged.name} cannot be loaded into this job's model, so it is refused" in run.data.tags["error"]
    assert not client.get_metric_history(run.info.run_id, "train/loss")


def test_the_exported_model_loads_in_transformers_and_computes_what_the_trained_one_did(reference, tracking_uri, tmp_path):
    client = MlflowClient(tracking_uri)
    directory = hf_directory(Path(client.download_artifacts(reference.run_id, "model", str(tmp_path))))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([tokenizer.encode(PROBE)])).logits
    torch.testing.assert_close(logits, reference.seen_at_export)
    (version,) = client.search_model_versions(f"run_id = '{reference.run_id}'")
    assert version.name == "reference"
    assert f"registered the model as models:/reference/{version.version}" in reference.log
    artifacts = {artifact.path for artifact in client.list_artifacts(reference.run_id, "plots")}
    assert "plots/training_curves.png" in artifacts


def test_logs_one_line_per_log_step_evaluation_and_start_up(reference):
    log = reference.log
    assert "1 workers on 1 node(s)" in log
    assert any(line.startswith("first optimizer step ") for line in log)
    assert [line.split(" |")[0] for line in log if line.startswith("step ") and "| eval" not in line] == [
        f"step {step}/{STEPS}" for step in range(1, STEPS + 1)
    ]
    assert [line.split(" | eval")[0] for line in log if "| eval" in line] == ["step 0 (untrained)", "step 10", "step 20"]


def test_a_rank_other_than_0_takes_part_at_the_same_steps_and_says_nothing(reference, rank_1, tracking_uri):
    """Its silent reporter: the same results to Ray (the loss averaged with the other ranks, its evaluation), its part
    of each checkpoint (no manifest: rank 0 writes it), and nothing in MLflow or the log."""
    assert [report.metrics.keys() for report in rank_1.reports] == [report.metrics.keys() for report in reference.reports]
    assert [report.metrics["step"] for report in rank_1.reports] == [5, 10, 15, 20]
    for report in rank_1.reports:
        files = {path.name for path in report.checkpoint.iterdir()}
        assert TAG in files and "rng_rank1.pt" in files and MANIFEST not in files, files
    client = MlflowClient(tracking_uri)
    assert client.get_run(rank_1.run_id).data.metrics == {} and not client.list_artifacts(rank_1.run_id)
    assert rank_1.log == []
