"""What `orchestrator submit` sends and how the job commands find a job's MLflow run (without a cluster)."""

import json
import shlex
from types import SimpleNamespace

import pytest
from helpers import free_port, mlflow_run_id, run_cli, tiny_job, write_job, write_sweep
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from orchestrator.cli import jobs
from orchestrator.cli.app import app
from orchestrator.cli.jobs import entrypoint, job_runs
from orchestrator.config import UserError
from orchestrator.config.load import validate
from orchestrator.tracking.run import TrackedRun, print_run_url, start_run


def test_a_job_inside_the_working_directory_is_named_relative_to_it(corpus, tmp_path):
    (tmp_path / "jobs").mkdir()
    job = write_job(tmp_path / "jobs" / "job.yaml", tiny_job(corpus))
    command = entrypoint(job, ["train.max_steps=7"], working_dir=tmp_path)
    assert shlex.split(command) == ["python", "-m", "orchestrator", "train", "jobs/job.yaml", "--set", "train.max_steps=7"]


def test_a_file_outside_it_keeps_its_absolute_path_and_a_sweep_runs_sweep(corpus, tmp_path):
    sweep = write_sweep(tmp_path, tiny_job(corpus))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert shlex.split(entrypoint(sweep, [], working_dir=elsewhere)) == ["python", "-m", "orchestrator", "sweep", str(sweep)]


def test_a_sweep_goes_with_its_set_values_checked_on_its_base_job(corpus, tmp_path):
    sweep = write_sweep(tmp_path, tiny_job(corpus))
    command = entrypoint(sweep, ["train.max_steps=5"], working_dir=tmp_path)
    assert shlex.split(command) == ["python", "-m", "orchestrator", "sweep", "sweep.yaml", "--set", "train.max_steps=5"]


def test_bad_files_are_refused_before_submission(corpus, tmp_path):
    job = write_job(tmp_path / "job.yaml", tiny_job(corpus))
    with pytest.raises(UserError, match="train.max_steps"):
        entrypoint(job, ["train.max_steps=-1"], working_dir=tmp_path)
    with pytest.raises(UserError, match="job.yaml: train.max_steps"):
        entrypoint(write_sweep(tmp_path, tiny_job(corpus)), ["train.max_steps=-1"], working_dir=tmp_path)


def submitted_as(submission_id: str, monkeypatch) -> None:
    """The environment Ray's job supervisor gives a driver (tracking/run.py reads the submission id from it)."""
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": submission_id}}))


def submitted_job(submission_id: str, uri: str | None) -> SimpleNamespace:
    """A job as the job API details it: its id, and the tracking URI it was submitted with, if any."""
    return SimpleNamespace(submission_id=submission_id, runtime_env={"env_vars": {"MLFLOW_TRACKING_URI": uri}} if uri else {})


def test_list_and_status_find_each_jobs_run_by_the_submission_it_is_tagged_with(corpus, tmp_path, mlflow_uri, monkeypatch):
    """A job stopped and submitted again resumes its run: both submissions find it. A sweep's trials carry the tag
    too: the sweep's own run is the one found. A job that opened no run, an id that only looks alike, and an id
    with a quote in it find nothing."""
    job = validate(tiny_job(corpus, tracking={"uri": mlflow_uri, "experiment": "jobs"}))
    submitted_as("raysubmit_first", monkeypatch)
    first = start_run(job, "resumed", str(tmp_path / "resumed"), artifacts={})
    submitted_as("raysubmit_again", monkeypatch)
    again = start_run(job, "resumed", str(tmp_path / "resumed"), artifacts={})
    submitted_as("raysubmit_sweep", monkeypatch)
    sweep = start_run(job, "sweep", str(tmp_path / "sweep"), artifacts={})
    start_run(job, "trial", str(tmp_path / "trial"), artifacts={}, tags={"mlflow.parentRunId": sweep.run_id})
    assert again.run_id == first.run_id and again.resumed

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # the default store of a job submitted without one
    ids = ["raysubmit_first", "raysubmit_again", "raysubmit_sweep", "raysubmit_never", "raysubmit_firs", "raysubmitXfirst", "x' OR '1"]
    runs = job_runs([submitted_job(ids[0], mlflow_uri), *(submitted_job(submission_id, None) for submission_id in ids[1:])])
    assert {key: run.run_id for key, run in runs.items()} == {ids[0]: first.run_id, ids[1]: first.run_id, ids[2]: sweep.run_id}
    assert MlflowClient(mlflow_uri).get_run(first.run_id).data.tags["ray.job_submission_id"] == "raysubmit_again"

    info = SimpleNamespace(
        submission_id="raysubmit_again",
        status=SimpleNamespace(value="SUCCEEDED"),
        message="",
        entrypoint="python -m orchestrator train job.yaml",
        start_time=None,
        runtime_env={},
    )
    monkeypatch.setattr(jobs, "known_job_client", lambda address, submission_id: (None, info))
    result = CliRunner().invoke(app, ["status", "raysubmit_again"])
    assert result.exit_code == 0 and result.output.splitlines()[-1] == f"MLflow run: {first.url}"


def test_a_store_that_is_not_there_is_said_and_not_created(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "mlflow.db"
    unreachable = f"http://127.0.0.1:{free_port()}"
    assert job_runs([submitted_job("raysubmit_a", f"sqlite:///{missing}"), submitted_job("raysubmit_b", unreachable)]) == {}
    errors = capsys.readouterr().err
    assert f"MLflow store sqlite:///{missing} does not answer" in errors and f"MLflow store {unreachable} does not answer" in errors
    assert not missing.parent.exists()


def test_the_run_line_is_the_one_tests_and_people_read_without_its_password(capsys):
    print_run_url(TrackedRun("http://me:pw@mlflow.example:5000/", "3", "0a1b2c", resumed=False))
    print_run_url(TrackedRun("http://mlflow.example", "3", "0a1b2c", resumed=True), "MLflow sweep run")
    first, second = capsys.readouterr().out.splitlines()
    assert first == "MLflow run (new): http://me:***@mlflow.example:5000/#/experiments/3/runs/0a1b2c"
    assert mlflow_run_id(first) == "0a1b2c"
    assert second == "MLflow sweep run (resumed): http://mlflow.example/#/experiments/3/runs/0a1b2c"


def test_a_job_command_without_a_cluster_says_so_in_one_line():
    result = run_cli("status", "raysubmit_x", "--address", f"http://127.0.0.1:{free_port()}", hard_stop_s=120)
    assert result.code == 2, str(result)
    assert "no Ray job API answers at http://127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
