"""The worker loop run in this process, in seconds: Ray Train V2's local mode (`ScalingConfig(num_workers=0)`) runs
`train_loop` here, as rank 0 of a one-process gloo group, on the splits of the task's encoded rows, in a Ray
instance of these tests' own (conftest.py), with an MLflow store in a temporary directory. What a cluster adds
(worker processes, their failures, the job API) is left to tests/integration."""

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray.train
import torch
from mlflow.tracking import MlflowClient

from orchestrator.config.job import JobConfig
from orchestrator.data.encode import ENCODERS, REPORT, is_validation
from orchestrator.data.pipeline import PreparedData, chat_settings
from orchestrator.data.read import fields_of, parse_file, resolve_data_files
from orchestrator.data.report import DataReport
from orchestrator.data.shards import Split, write_split
from orchestrator.data.tokenizers import load_tokenizer, separator_id, train_tokenizer
from orchestrator.tracking.model import ARTIFACT_PATH
from orchestrator.tracking.run import ends_with_outcome, start_run
from orchestrator.train import loop
from orchestrator.train.launch import local_trainer, train_plan
from orchestrator.train.local import one_process_group
from orchestrator.train.session import total_steps
from orchestrator.train.timeline import Timeline
from orchestrator.train.worker import Worker

REPORTER_LOG = logging.getLogger("orchestrator.train.reporting")


@dataclass
class Report:
    """One `ray.train.report` of the loop."""

    metrics: dict
    checkpoint: Path | None  # a copy, as Ray Train keeps one in the run's storage
    model_logged: bool  # the run's MLflow model existed when it was reported


@dataclass
class LocalRun:
    run_id: str
    reports: list[Report] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # the reporter's lines
    seen_at_export: Any = None

    def history(self, uri: str, key: str) -> dict[int, float]:
        return {metric.step: metric.value for metric in MlflowClient(uri).get_metric_history(self.run_id, key)}

    def checkpoint_at(self, step: int) -> Path:
        (checkpoint,) = [report.checkpoint for report in self.reports if report.metrics["step"] == step]
        return checkpoint


class RankContext:
    """Ray Train's context of this process, with another world rank."""

    def __init__(self, context, rank: int):
        self.context, self.rank = context, rank

    def get_world_rank(self) -> int:
        return self.rank

    def __getattr__(self, name: str):
        return getattr(self.context, name)


class LineCollector(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def prepared_in_memory(job: JobConfig, directory: Path) -> PreparedData:
    """What `prepare` makes of the job's data files, made here in memory without its Ray Data pipeline, whose
    executions take seconds each (its stages are tested in tests/unit/test_data_stages.py, the whole on a cluster):
    the rows as the reader parses them, the job's tokenizer (trained on their texts, or loaded), each row's split, and
    the task's encoder; the splits written as `prepare` writes them, into `directory`."""
    fields = fields_of(job)
    paths = resolve_data_files(job)
    files = [parse_file(Path(path).read_bytes(), path, index, "jsonl", fields) for index, path in enumerate(paths)]
    rows = [row for parsed in files for row in parsed if not row["stage"]]  # without the lines the reader refuses
    texts = [row["text"] for row in rows]
    tokenizer = load_tokenizer(job.data.tokenizer.path) if job.data.tokenizer.path else train_tokenizer(job.data.tokenizer, texts)
    label_names = sorted({row["label"] for row in rows}) if "label" in fields else []
    batch = {column: np.array([row[column] for row in rows], dtype=object) for column in fields}
    batch["is_val"] = np.array([is_validation(text, job.data.val_fraction, job.data.seed) for text in texts])
    batch["row_id"] = np.array([row["row_id"] for row in rows], dtype=np.int64)
    encoded = ENCODERS[job.task](
        batch,
        tokenizer_json=tokenizer.backend_tokenizer.to_str(),
        seq_len=job.data.seq_len,
        separator=separator_id(tokenizer),
        pad=tokenizer.pad_token_id,
        label_ids={name: i for i, name in enumerate(label_names)},
        **(chat := chat_settings(job, tokenizer)),
    )
    encoded.pop(REPORT, None)
    in_val = encoded.pop("is_val")
    train, val = (
        write_and_open({column: values[in_val == split] for column, values in encoded.items()}, directory / name)
        for name, split in (("train", False), ("val", True))
    )
    chat_template = chat["chat_template"] if job.task == "sft" else None
    return PreparedData(
        train, val, tokenizer.backend_tokenizer.to_str(), len(train), len(val), label_names, DataReport(), directory, chat_template=chat_template
    )


def write_and_open(columns: dict[str, np.ndarray], directory: Path) -> Split:
    write_split([columns], directory)
    return Split(directory)


def train_in_process(
    job: JobConfig,
    data: PreparedData,
    tmp: Path,
    name: str,
    initial_checkpoint: Path | None = None,
    look_at_export: Callable[[Worker], Any] | None = None,
    as_rank: int = 0,
    cpus: int = 1,
) -> LocalRun:
    """What `orchestrator train` does (train/launch.py), with this process for the worker group. Every result the loop
    reports to Ray is kept with a copy of its checkpoint. `look_at_export(worker)`: run on the trained worker right
    after the loop's export; what it returns is the run's `seen_at_export`. `as_rank`: the rank Ray Train's context
    gives the loop (alone in its process group, a rank other than 0 still runs every collective). `cpus`: the
    worker's CPUs, as many torch threads."""
    keep_artifacts_beside_the_store(job.tracking.uri, job.tracking.experiment)
    run = start_run(job, name, str(tmp / name), artifacts={})
    steps = total_steps(job, data.train_sequences)
    start = str(initial_checkpoint) if initial_checkpoint else None
    plan = train_plan(data, run, steps, Timeline(), registered_model=name, initial_checkpoint=start)
    local = LocalRun(run.run_id)
    client = MlflowClient(run.uri)
    report_to_ray, exported_model, context = ray.train.report, loop.exported_model, ray.train.get_context

    def report(metrics: dict, checkpoint: ray.train.Checkpoint | None = None, **kwargs) -> None:
        copy = Path(shutil.copytree(checkpoint.path, tmp / f"{name}-checkpoint-{metrics['step']}")) if checkpoint else None
        local.reports.append(Report(metrics, copy, model_logged=bool(client.list_artifacts(run.run_id, ARTIFACT_PATH))))
        report_to_ray(metrics, checkpoint=checkpoint, **kwargs)

    @contextmanager
    def export_and_look(worker: Worker) -> Iterator[str]:
        with exported_model(worker) as hf_dir:
            yield hf_dir
        if look_at_export:
            local.seen_at_export = look_at_export(worker)

    lines = LineCollector(local.log)
    threads = torch.get_num_threads()
    torch.set_num_threads(cpus)  # as Ray runs a worker: more threads than its CPUs would wait on each other
    with pytest.MonkeyPatch.context() as patch, one_process_group():
        patch.setattr(ray.train, "report", report)
        patch.setattr(loop, "exported_model", export_and_look)
        patch.setattr(ray.train, "get_context", lambda: RankContext(context(), as_rank))
        REPORTER_LOG.addHandler(lines)
        try:
            with ends_with_outcome(run):  # as the driver session ends it (train/session.py)
                local_trainer(job, plan).fit()  # Ray Train V2's local mode: train_loop runs here, as in a sweep trial
        finally:
            REPORTER_LOG.removeHandler(lines)
            torch.set_num_threads(threads)
    return local


def keep_artifacts_beside_the_store(uri: str, experiment: str) -> None:
    """A new experiment's artifacts would go to ./mlruns, in the repository."""
    client = MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / experiment
        client.create_experiment(experiment, artifact_location=artifacts.as_uri())
