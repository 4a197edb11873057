"""The command line has one shape: -h everywhere, help without type noise, --set wherever a job or sweep file is read,
--address wherever a cluster is reached (and each --address saying which address it is), `cluster status` counting
what runs. In-process, no cluster."""

import re
import sys
from types import SimpleNamespace

import pytest
import typer.main
from helpers import tiny_job, write_job, write_sweep
from ray.job_submission import JobDetails, JobStatus, JobType
from typer.testing import CliRunner

from orchestrator import runtime
from orchestrator.cli import app
from orchestrator.cli.cluster import count_jobs

ROOT = typer.main.get_command(app)
READ_A_JOB_OR_SWEEP = ("train", "sweep", "prepare", "validate", "plan", "submit")
RUN_ON_A_CLUSTER = ("train", "sweep", "prepare", "predict", "evaluate")  # --address: the cluster's GCS address
USE_THE_JOB_API = ("submit", "status", "logs", "stop", "list")  # --address: the cluster's job API URL


def command_paths(command, path=()):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from command_paths(sub, (*path, name))


def options(name: str) -> set[str]:
    return {option for param in ROOT.commands[name].params for option in param.opts}


@pytest.mark.parametrize("path", list(command_paths(ROOT)), ids=lambda path: " ".join(path) or "orchestrator")
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_help_shows_names_not_python_types(path, flag):
    result = CliRunner().invoke(app, [*path, flag])
    assert result.exit_code == 0 and result.output.startswith("Usage: "), result.output
    assert not re.search(r"list\[|<bool>|Path\]|--[\w-]+ <", result.output), result.output  # an option's value: a name
    listed = result.output.partition("\nCommands:\n")[2]  # a group's commands, one line each, none cut short
    assert not any(line.endswith("...") for line in listed.splitlines()), listed


def test_set_wherever_a_job_or_sweep_file_is_read_and_address_wherever_a_cluster_is_reached():
    assert all("--set" in options(name) for name in READ_A_JOB_OR_SWEEP)
    for names, meaning in ((RUN_ON_A_CLUSTER, "GCS address"), (USE_THE_JOB_API, "job API")):
        for name in names:
            (address,) = [param for param in ROOT.commands[name].params if "--address" in param.opts]
            assert meaning in address.help, (name, address.help)


def test_an_address_given_is_the_one_joined(monkeypatch):
    joined = []
    monkeypatch.setattr(runtime.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.ray, "init", lambda address=None, **settings: joined.append(address))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")
    assert runtime.connect("10.0.0.1:6379") == "the Ray cluster at 10.0.0.1:6379"
    assert runtime.connect() == "the Ray cluster at 10.0.0.2:6379"  # else RAY_ADDRESS, as before
    assert joined == ["10.0.0.1:6379", "10.0.0.2:6379"]


def test_commands_pass_their_address_and_set_values_on(monkeypatch, corpus, tmp_path):
    """The drivers stand in for the modules the commands import when they run (torch, Ray Train, Tune: seconds)."""
    received = {}
    done = SimpleNamespace(metrics={}), SimpleNamespace(url="http://mlflow/run")  # a result and a run

    def connect(address):
        received["prepare"] = address
        return address

    def launch_job(job, name, restart, address):
        received["train"] = address
        return done

    def run_sweep(loaded, address):
        received.update(sweep=address, steps=loaded.base_job.train.max_steps)
        return done

    monkeypatch.setattr(runtime, "connect", connect)
    monkeypatch.setitem(sys.modules, "orchestrator.data.pipeline", SimpleNamespace(prepare=lambda job: None, remove_uncached=lambda data: None))
    monkeypatch.setitem(sys.modules, "orchestrator.train.launch", SimpleNamespace(launch=launch_job))
    monkeypatch.setitem(sys.modules, "orchestrator.tune.sweep", SimpleNamespace(run_sweep=run_sweep))
    job = write_job(tmp_path / "job.yaml", tiny_job(corpus))
    sweep_file = write_sweep(tmp_path, tiny_job(corpus))
    for command, file in (("prepare", job), ("train", job), ("sweep", sweep_file)):
        result = CliRunner().invoke(app, [command, str(file), "--address", f"{command}:6379", "--set", "train.max_steps=12"])
        assert result.exit_code == 0, result.output
    assert received == {"prepare": "prepare:6379", "train": "train:6379", "sweep": "sweep:6379", "steps": 12}


def job(status: JobStatus, submission_id: str | None = None, job_id: str = "01000000") -> JobDetails:
    kind = JobType.SUBMISSION if submission_id else JobType.DRIVER
    return JobDetails(type=kind, job_id=job_id, submission_id=submission_id, status=status, entrypoint="python -m orchestrator train job.yaml")


def test_cluster_status_counts_every_running_job_and_not_its_own_connection():
    jobs = [
        job(JobStatus.RUNNING, "raysubmit_a", "02000000"),
        job(JobStatus.PENDING, "raysubmit_b"),
        job(JobStatus.SUCCEEDED, "raysubmit_c", "03000000"),
        job(JobStatus.RUNNING, job_id="04000000"),  # `python -m orchestrator train` run by hand on the cluster
        job(JobStatus.SUCCEEDED, job_id="05000000"),  # an earlier client (any `cluster status` leaves one)
        job(JobStatus.RUNNING, job_id="06000000"),  # this command's own, not marked ended yet
    ]
    running, counted = count_jobs(jobs, own_job_id="06000000")
    assert [item.submission_id or item.job_id for item in running] == ["raysubmit_a", "raysubmit_b", "04000000"]
    assert counted == 4
