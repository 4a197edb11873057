"""What `orchestrator submit` sends and how the job commands find a job's MLflow run (without a cluster)."""

import shlex

import pytest
from helpers import free_port, run_cli, tiny_job, write_job, write_sweep

from orchestrator.cli.jobs import entrypoint, mlflow_run_url
from orchestrator.config import UserError


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


def test_bad_files_are_refused_before_submission(corpus, tmp_path):
    job = write_job(tmp_path / "job.yaml", tiny_job(corpus))
    with pytest.raises(UserError, match="train.max_steps"):
        entrypoint(job, ["train.max_steps=-1"], working_dir=tmp_path)
    with pytest.raises(UserError, match="--set"):
        entrypoint(write_sweep(tmp_path, tiny_job(corpus)), ["train.max_steps=5"], working_dir=tmp_path)


@pytest.mark.parametrize("line, url", [
    ("MLflow run (new): http://127.0.0.1:5000/#/experiments/1/runs/abc", "http://127.0.0.1:5000/#/experiments/1/runs/abc"),
    ("MLflow run: http://h:5000/#/experiments/1/runs/abc", "http://h:5000/#/experiments/1/runs/abc"),
    ("MLflow sweep run: http://h/#/experiments/2/runs/def", "http://h/#/experiments/2/runs/def"),
    ("MLflow run (resumed): run abc in sqlite:///x/mlflow.db (view with: mlflow ui)", "run abc in sqlite:///x/mlflow.db"),
    ("step 3/10 | loss 4.1", None),
])
def test_the_mlflow_run_is_read_from_the_line_the_driver_prints(line, url):
    assert mlflow_run_url(f"connected to the local Ray cluster\n{line}\n") == url


def test_a_job_command_without_a_cluster_says_so_in_one_line():
    result = run_cli("status", "raysubmit_x", "--address", f"http://127.0.0.1:{free_port()}", hard_stop_s=120)
    assert result.code == 2, str(result)
    assert "no Ray job API answers at http://127.0.0.1:" in result.stderr and "Traceback" not in result.stderr
