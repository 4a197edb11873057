"""What the driver of a training job and of a sweep do alike, around the work that differs (a TorchTrainer, a
Tune experiment): claim the run's directory, connect, check the cluster, prepare the data, count the steps, open
the MLflow run, log the data report; and at the end, close the run with the outcome and print its URL, last."""

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import psutil

from orchestrator import runtime
from orchestrator.config.errors import UserError
from orchestrator.config.job import JobConfig
from orchestrator.config.paths import claim
from orchestrator.data.pipeline import PreparedData, prepare, remove_uncached
from orchestrator.tracking.data_report import log_data_report
from orchestrator.tracking.run import TrackedRun, ends_with_outcome, print_run_url
from orchestrator.train.timeline import Timeline


@dataclass(frozen=True)
class SessionKind:
    name_field: str  # the key the directory's name comes from, named in errors
    label: str  # how the run's URL line names the run


# The kind of directory (config/paths.py claim) a session keeps its checkpoints in -> what a session of it is.
SESSION_KINDS = {
    "run": SessionKind("tracking.run_name", "MLflow run"),
    "sweep": SessionKind("name", "MLflow sweep run"),
}


@dataclass
class DriverSession:
    data: PreparedData
    steps: int  # optimizer steps of the job (of each trial, in a sweep)
    run: TrackedRun
    timeline: Timeline  # from the process start: imports count too


def total_steps(job: JobConfig, train_sequences: int) -> int:
    if job.train.max_steps:
        return job.train.max_steps
    steps = math.ceil(job.train.epochs * (train_sequences // job.global_batch_size))
    if steps < 1:
        raise UserError("train.epochs: too few to make one optimizer step; raise it or set train.max_steps")
    return steps


@contextmanager
def meanwhile(work: Callable, *args) -> Iterator[None]:
    """Runs `work(*args)` in a thread while the block runs, and raises its error, if any, when the block ends. The
    data report (a plot, six MLflow requests: about a second) is logged while the workers start, off the way to the
    first step."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        done = thread.submit(work, *args)
        yield
        done.result()


@contextmanager
def driver_session(job: JobConfig, run_dir: str, kind: str, open_run: Callable[[], TrackedRun], address: str | None = None) -> Iterator[DriverSession]:
    """The session of a `kind` ("run" or "sweep") directory `run_dir`, on the Ray cluster at `address`
    (runtime.connect), whose MLflow run `open_run` opens once the data is ready. Whatever the block does, the run ends
    with it (tracking/run.py ends_with_outcome) and its URL is the last line printed."""
    timeline = Timeline(started=psutil.Process().create_time())
    timeline.mark("python_start")
    claim(run_dir, kind, SESSION_KINDS[kind].name_field)
    print(f"connected to {runtime.connect(address)}", flush=True)
    runtime.check_resources(job)
    timeline.mark("ray_connect")
    data = prepare(job)
    try:
        steps = total_steps(job, data.train_sequences)
        timeline.mark("data_prepare")
        run = open_run()
        try:
            with ends_with_outcome(run):  # from here on, whatever fails ends the run
                with nullcontext() if run.resumed else meanwhile(log_data_report, run.uri, run.run_id, data):
                    timeline.mark("mlflow_run")
                    yield DriverSession(data, steps, run, timeline)
        finally:
            print_run_url(run, SESSION_KINDS[kind].label)
    finally:
        remove_uncached(data)
