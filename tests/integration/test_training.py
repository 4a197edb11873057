"""Real jobs on a real Ray cluster with real DeepSpeed and a real MLflow server, on a tiny GPT-2."""

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
import torch
from helpers import ANSI, job_api, mlflow_run_id, orchestrator, submission_id, tiny_job, write_job
from helpers import submit as submit_job
from job_log import MLFLOW_RUN_URL, is_framework_line, lines_of
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestrator.tracking.model import hf_directory
from orchestrator.train.timeline import PHASES

pytestmark = pytest.mark.integration
# The pipeline job's first part stops at step 10: a schedule that does not depend on max_steps keeps its learning
# rates those of the uninterrupted data-parallel job.
CONSTANT_LR = {"schedule": {"name": "constant", "warmup_steps": 2}}
# Models for the layout comparisons: no dropout (each layout draws its random numbers on other ranks), and blocks
# that outweigh the embeddings, so that the share of the parameters a model-parallel worker holds means something.
GPT2_NO_DROPOUT = {"family": "gpt2", "dims": {"layers": 4, "hidden": 128, "heads": 4, "ffn": 512, "max_positions": 64}, "dropout": 0.0}
LLAMA_NO_DROPOUT = {
    "family": "llama",
    "dims": {"layers": 4, "hidden": 128, "heads": 4, "kv_heads": 2, "ffn": 344, "max_positions": 64},
    "dropout": 0.0,
}
FRAMEWORK_SHARE = 0.8  # of a job log's lines, at least
ONE_REPLICA = {"micro_batch_size": 4, "grad_accum_steps": 2}  # the global batch of 2 workers x 4, on one data-parallel replica


@dataclass
class FinishedRun:
    run_id: str
    output: str
    job: Path


def run_job(cluster, tmp: Path, name: str, corpus: Path, submit: bool = False, checkpoint_every: int = 5, **sections) -> FinishedRun:
    checkpoint = {"dir": str(tmp / "runs"), "every_steps": checkpoint_every}
    job = tiny_job(corpus, checkpoint=checkpoint, tracking={"experiment": "integration", "run_name": name}, **sections)
    path = write_job(tmp / f"{name}.yaml", job)
    if submit:  # the way users run jobs: through the cluster's job API
        output = submit_job(cluster, "train", str(path))
    else:
        result = orchestrator(cluster, "train", str(path))
        output = ANSI.sub("", result.stdout + result.stderr)
        assert result.returncode == 0, output[-4000:]
    return FinishedRun(mlflow_run_id(output), output, path)


def history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """Metric value per step; where a step was logged twice (replayed after a resume), the latest value."""
    ordered = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
    return {metric.step: metric.value for metric in ordered}


def assert_close(actual: dict[int, float], expected: dict[int, float], rel: float) -> None:
    assert actual.keys() == expected.keys()
    for step in expected:
        assert abs(actual[step] - expected[step]) <= rel * abs(expected[step]), (step, actual[step], expected[step])


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    return MlflowClient(mlflow_server)


@pytest.fixture(scope="module")
def data_parallel(cluster, corpus, tmp_path_factory) -> FinishedRun:
    """A 20-step job of GPT-2 on 2 data-parallel workers under ZeRO-2, submitted through `ray job submit`. (Each ZeRO
    stage against stage 0, step by step: tests/multiprocess/test_layouts.py.)"""
    sections = {"model": GPT2_NO_DROPOUT, "deepspeed": {"zero_stage": 2}, "train": CONSTANT_LR}
    return run_job(cluster, tmp_path_factory.mktemp("dp"), "zero2", corpus, submit=True, **sections)


def test_loss_decreases(data_parallel, client):
    losses = list(history(client, data_parallel.run_id, "train/loss").values())
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    perplexity = history(client, data_parallel.run_id, "eval/perplexity")
    assert sorted(perplexity) == [0, 10, 20]  # evaluated untrained (eval_at_start), then every 10 steps
    assert perplexity[20] < perplexity[10] < perplexity[0]


def test_submitted_job_is_fully_tracked(data_parallel, client):
    run = client.get_run(data_parallel.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["deepspeed.zero_stage"] == "2" and run.data.params["train.max_steps"] == "20"
    assert run.data.tags["ray.job_submission_id"].startswith("raysubmit_")
    assert {"task", "model.family", "deepspeed.zero_stage", "host"} <= run.data.tags.keys()
    metrics = run.data.metrics
    for key in ["train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "eval/loss", "eval/perplexity"]:
        assert key in metrics, key
    assert 0 < metrics["time/first_step_s"] < 300
    startup = {key for key in metrics if key.startswith("time/startup/")}
    assert startup == {f"time/startup/{phase}_s" for phase in PHASES}
    assert sum(metrics[key] for key in startup) == pytest.approx(metrics["time/first_step_s"], abs=0.01)
    assert metrics["perf/flops_per_s"] > 0 and metrics["perf/model_flops_per_token"] > 0 and "perf/mfu" not in metrics  # CPU
    assert 0 < metrics["memory/at_start_bytes"] < metrics["memory/peak_bytes"]
    assert 0 <= metrics["train/allreduce_fraction"] < 1
    assert any(key.startswith("system/") for key in metrics), "no system metrics"
    assert sorted(history(client, run.info.run_id, "eval/loss")) == [0, 10, 20]
    assert {"data/rows_read", "data/tokens", "train/data_wait_fraction"} <= metrics.keys()

    folders = ("", "model", "model/artifacts/hf", "plots")
    artifacts = {a.path for folder in folders for a in client.list_artifacts(run.info.run_id, folder)}
    expected = {"job.yaml", "deepspeed_config.json", "model/MLmodel", "plots/training_curves.png"}
    assert expected | {f"model/artifacts/hf/{name}" for name in ("config.json", "model.safetensors", "tokenizer.json")} <= artifacts


def test_the_model_is_registered_under_the_run_name_and_predicts_through_pyfunc(data_parallel, client, corpus, mlflow_server, monkeypatch):
    (version,) = client.search_model_versions(f"run_id = '{data_parallel.run_id}'")
    assert version.name == "zero2"  # tracking.run_name
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/zero2/{version.version}")
    documents = "\n".join(json.loads(line)["text"] for line in corpus.read_text().splitlines())
    assert all(text and text in documents for text in model.input_example["text"])  # decoded from the training data
    predicted = model.predict(pd.DataFrame({"text": ["the cat sees", "a dog"]}))
    assert list(predicted.columns) == ["generated"] and len(predicted) == 2
    assert all(isinstance(text, str) for text in predicted["generated"])


def exported_loss(client: MlflowClient, run_id: str, corpus: Path, tmp: Path) -> float:
    """The exported model's loss on the corpus's first texts, read back as a plain Hugging Face model."""
    directory = hf_directory(Path(client.download_artifacts(run_id, "model", str(tmp))))
    model, tokenizer = AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    text = " ".join(json.loads(line)["text"] for line in corpus.read_text().splitlines()[:8])
    ids = torch.tensor([tokenizer.encode(text)[:64]])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def model_parallel_job(cluster, corpus, tmp_path, kind: str, model: dict, submit: bool, checkpoint_every: int = 5, **train) -> FinishedRun:
    """2 workers as 2 pipeline stages or 2 tensor-parallel ranks: one data-parallel replica accumulating 2 micro
    batches of 4, the global batch of 2 data-parallel workers of 4."""
    sections = {"model": model, "parallelism": {kind: 2}, "deepspeed": {"zero_stage": 1}}
    train = CONSTANT_LR | ONE_REPLICA | train
    return run_job(cluster, tmp_path, kind, corpus, submit=submit, train=train, checkpoint_every=checkpoint_every, **sections)


def assert_split_in_two(client: MlflowClient, run: FinishedRun, layout: str) -> None:
    assert f"data x tensor x pipeline = {layout}" in run.output
    shares = history(client, run.run_id, "memory/parameter_share").values()  # logged by each part
    assert all(0.45 < share < 0.6 for share in shares), shares  # 1/2 of the blocks; the embeddings on both workers


def test_a_pipeline_job_stopped_and_resubmitted_resumes_in_its_run_and_trains_like_data_parallel(cluster, corpus, client, tmp_path, data_parallel):
    """GPT-2 as 2 pipeline stages stops at step 10 and, submitted again through the job API with the same run name,
    resumes from its per-stage checkpoint in the same MLflow run. With the seed and global batch of the 2-worker
    data-parallel job (data/feed.py: the batches do not depend on how many replicas share them), it has that job's
    losses over the 20 steps, and its export is one whole Hugging Face model that computes what that job's does.
    (Every layout's equivalence, step by step: tests/multiprocess/test_layouts.py; an exact resume with dropout:
    tests/inprocess/test_loop.py.)"""
    first = model_parallel_job(cluster, corpus, tmp_path, "pipeline", GPT2_NO_DROPOUT, submit=False, max_steps=10)
    run = model_parallel_job(cluster, corpus, tmp_path, "pipeline", GPT2_NO_DROPOUT, submit=True)
    assert "resumed from step 10 (epoch 0)" in run.output and run.run_id == first.run_id
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert_split_in_two(client, run, "1 x 1 x 2")

    losses = history(client, run.run_id, "train/loss")
    assert sorted(losses) == list(range(1, 21))
    assert_close(losses, history(client, data_parallel.run_id, "train/loss"), rel=1e-3)
    checkpoints = [path for path in (tmp_path / "runs" / "pipeline").glob("checkpoint_*") if path.is_dir()]
    assert len(checkpoints) == 2  # checkpoint.keep, across both parts
    assert exported_loss(client, run.run_id, corpus, tmp_path / "mp") == pytest.approx(
        exported_loss(client, data_parallel.run_id, corpus, tmp_path / "dp"), rel=1e-3
    )


def test_a_tensor_parallel_job_learns_exports_one_model_and_its_log_is_the_frameworks_own(cluster, corpus, client, tmp_path):
    """Llama on 2 tensor-parallel ranks, submitted through the job API with the quickstart's log, evaluation and
    checkpoint proportions: each rank holds about half the parameters, the loss falls, and the export is one whole
    Hugging Face model (its equivalence with data parallelism, step by step and exported:
    tests/multiprocess/test_layouts.py). Its log, as the job API keeps it, is one a person reads: at least 80% of its
    lines the framework's own (tests/job_log.py), no colour codes, and the MLflow run's URL once, as its last line."""
    proportions = {"log_every": 5, "eval_every": 10}
    run = model_parallel_job(cluster, corpus, tmp_path, "tensor", LLAMA_NO_DROPOUT, submit=True, checkpoint_every=10, **proportions)
    assert_split_in_two(client, run, "1 x 2 x 1")
    losses = history(client, run.run_id, "train/loss")
    untrained = history(client, run.run_id, "eval/loss")[0]
    assert sorted(losses) == [5, 10, 15, 20] and losses[20] < losses[5] < untrained
    assert exported_loss(client, run.run_id, corpus, tmp_path / "mp") < 0.8 * untrained

    log = job_api(cluster, f"{submission_id(run.output)}/logs")["logs"]
    lines = lines_of(log)
    noise = [line for line in lines if not is_framework_line(line)]
    assert len(lines) - len(noise) >= FRAMEWORK_SHARE * len(lines), "not the framework's:\n" + "\n".join(noise)
    assert "\x1b" not in log
    assert [line for line in lines if MLFLOW_RUN_URL.search(line)] == [lines[-1]], log


@pytest.mark.parametrize(
    "case, sections, message",
    [
        ("too many workers", {"scaling": {"num_workers": 4}}, "scaling.num_workers: 4 workers x 1 CPU need 4 CPUs, the cluster has 2"),
        ("nothing to train on", {"data": {"seq_len": 64}}, "fewer than one global batch"),
    ],
)
def test_bad_input_stops_before_any_worker_starts(cluster, tmp_path, case, sections, message):
    corpus = tmp_path / "small.jsonl"
    corpus.write_text('{"text": "only a few words here"}\n' * 3)
    path = write_job(tmp_path / "job.yaml", tiny_job(corpus, **sections))
    result = orchestrator(cluster, "train", str(path), timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "RayTrainWorker" not in result.stdout + result.stderr
