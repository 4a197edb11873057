"""The worker loop run in this process, in seconds: Ray Train V2's local mode (`ScalingConfig(num_workers=0)`) runs
`train_loop` here, as rank 0 of a one-process gloo group (conftest.py), on data prepared by the driver's own `prepare`
in a Ray instance of these tests' own, with an MLflow store in a temporary directory. What a cluster adds (worker processes,
their failures, the job API) is left to tests/integration."""

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed.comm
import pytest
import ray.train
import torch
import torch.distributed as dist
from helpers import free_port
from mlflow.tracking import MlflowClient
from ray.train.torch import TorchTrainer

from orchestrator.config.job import JobConfig
from orchestrator.data.pipeline import PreparedData
from orchestrator.tracking.model import ARTIFACT_PATH
from orchestrator.tracking.run import start_run
from orchestrator.train.launch import total_steps, train_plan
from orchestrator.train.loop import train_loop
from orchestrator.train.timeline import Timeline

# torchrun's variables, from which Ray Train's local mode makes a process group: gloo, of this process alone
ONE_PROCESS_GROUP = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}

@dataclass
class Report:
    """One `ray.train.report` of the loop."""

    metrics: dict
    checkpoint: Path | None  # a copy, as Ray Train keeps one in the run's storage
    model_logged: bool  # the run's MLflow model existed when it was reported


@dataclass
class LocalRun:
    run_id: str
    total_steps: int
    reports: list[Report] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # the reporter's lines

    def history(self, uri: str, key: str) -> dict[int, float]:
        return {metric.step: metric.value for metric in MlflowClient(uri).get_metric_history(self.run_id, key)}


class LineCollector(logging.Handler):
    def __init__(self, lines: list[str]):
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def train_in_process(
    job: JobConfig, data: PreparedData, tmp: Path, name: str, initial_checkpoint: Path | None = None, during_export=None
) -> LocalRun:
    """What `orchestrator train` does (train/launch.py), with the worker group replaced by this process. Every result
    the loop reports to Ray is kept with a copy of its checkpoint. `during_export(worker)`: runs on the trained worker
    right after the loop's export."""
    keep_artifacts_beside_the_store(job.tracking.uri, job.tracking.experiment)
    run = start_run(job, name, str(tmp / name), artifacts={})
    steps = total_steps(job, data.train_sequences)
    plan = train_plan(data, run, steps, Timeline(), registered_model=name, initial_checkpoint=str(initial_checkpoint) if initial_checkpoint else None)
    local = LocalRun(run.run_id, steps)
    client = MlflowClient(run.uri)
    ray_report = ray.train.report

    def report(metrics: dict, checkpoint: ray.train.Checkpoint | None = None, **kwargs) -> None:
        copy = Path(shutil.copytree(checkpoint.path, tmp / f"{name}-checkpoint-{metrics['step']}")) if checkpoint else None
        local.reports.append(Report(metrics, copy, model_logged=bool(client.list_artifacts(run.run_id, ARTIFACT_PATH))))
        ray_report(metrics, checkpoint=checkpoint, **kwargs)

    collector = LineCollector(local.log)
    reporting_log = logging.getLogger("orchestrator.train.reporting")
    trainer = TorchTrainer(
        train_loop_in_a_worker_process,
        train_loop_config={"job": job, "plan": plan},
        scaling_config=ray.train.ScalingConfig(num_workers=0),  # Ray Train V2's local mode: train_loop runs here
        datasets={"train": data.train} | ({"val": data.val} if data.val is not None else {}),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as Ray runs a worker of 1 CPU: more threads than cores wait on each other
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in ONE_PROCESS_GROUP.items() | {"MASTER_PORT": str(free_port())}.items():
            patch.setenv(variable, value)
        patch.setattr(ray.train, "report", report)
        if during_export:
            spy_on_export(patch, during_export)
        reporting_log.addHandler(collector)
        try:
            trainer.fit()
        finally:
            reporting_log.removeHandler(collector)
            torch.set_num_threads(threads)
    return local


def train_loop_in_a_worker_process(config: dict) -> None:
    """train_loop, then what the end of its worker process would do: the process group goes, and DeepSpeed's clone of
    it (which DeepSpeed would otherwise keep for the next run here, in a group that no longer exists)."""
    try:
        train_loop(config)
    finally:
        if deepspeed.comm.is_initialized():
            deepspeed.comm.destroy_process_group()
        elif dist.is_initialized():
            dist.destroy_process_group()


def keep_artifacts_beside_the_store(uri: str, experiment: str) -> None:
    """A new experiment's artifacts would go to ./mlruns, in the repository."""
    client = MlflowClient(uri)
    if client.get_experiment_by_name(experiment) is None:
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "artifacts" / experiment
        client.create_experiment(experiment, artifact_location=artifacts.as_uri())


def spy_on_export(patch: pytest.MonkeyPatch, during_export) -> None:
    from orchestrator.train import loop

    export = loop.export

    def export_then_look(worker, reporter) -> None:
        export(worker, reporter)
        during_export(worker)

    patch.setattr(loop, "export", export_then_look)
