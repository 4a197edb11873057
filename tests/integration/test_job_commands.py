"""The job commands (submit, status, logs, list, stop) against the test cluster's job API, run as a user runs them."""

import re
import subprocess
import sys

import pytest
from helpers import ANSI, REPO, tiny_job, wait_until, write_job

pytestmark = pytest.mark.integration


def run_job_command(cluster, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = cluster.env | {"RAY_API_SERVER_ADDRESS": cluster.dashboard}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def cli(cluster, *args: str, timeout: float = 300) -> tuple[int, str]:
    done = run_job_command(cluster, *args, timeout=timeout)
    return done.returncode, ANSI.sub("", done.stdout + done.stderr)


def job_file(corpus, tmp_path, name: str, steps: int):
    job = tiny_job(
        corpus,
        train={"max_steps": steps, "eval_every": None, "eval_at_start": False, "log_every": 2},
        scaling={"num_workers": 1},
        checkpoint={"every_steps": None, "dir": str(tmp_path / "runs")},
        tracking={"experiment": "cli-jobs", "run_name": name},
    )
    return write_job(tmp_path / f"{name}.yaml", job)


def test_submit_follow_status_logs_list_and_stop(cluster, corpus, tmp_path):
    """Two jobs at once (1 worker each): one followed to its end, one stopped while it runs."""
    # A list in --set puts brackets in the entrypoint, which `list` prints as they are
    code, out = cli(cluster, "submit", str(job_file(corpus, tmp_path, "stopped", steps=100_000)), "--set", f"data.paths=[{corpus}]")
    assert code == 0, out
    running_id = re.search(r"submitted (\S+):", out).group(1)

    followed = run_job_command(cluster, "submit", str(job_file(corpus, tmp_path, "followed", steps=6)), "--follow")
    out = ANSI.sub("", followed.stdout + followed.stderr)
    assert followed.returncode == 0, out[-3000:]
    submission_id = re.search(r"submitted (\S+):", out).group(1)
    assert "step 6/6" in out  # the job's own log, streamed, which ends with its run's URL
    url = re.search(r"MLflow run \(new\): (\S+)", out).group(1)
    # Last on stdout; Ray's job client logs its package upload on stderr, which a terminal shows before
    assert ANSI.sub("", followed.stdout).rstrip().endswith(f"job {submission_id}: SUCCEEDED")
    assert "/runs/" in url

    code, out = cli(cluster, "status", submission_id)
    assert code == 0 and f"job {submission_id}: SUCCEEDED" in out and f"MLflow run: {url}" in out
    code, out = cli(cluster, "logs", submission_id)
    assert code == 0 and "step 6/6" in out
    code, out = cli(cluster, "list")
    assert code == 0, out
    [row] = [line for line in out.splitlines() if submission_id in line]
    assert "SUCCEEDED" in row and url in row
    assert "RUNNING" in next(line for line in out.splitlines() if running_id in line)

    wait_until(lambda: "step 2/" in cli(cluster, "logs", running_id)[1], timeout=120, what="the other job's first steps")
    code, out = cli(cluster, "stop", running_id)
    assert code == 0 and f"stop requested for {running_id}" in out
    code, out = cli(cluster, "logs", running_id, "--follow")
    assert code == 130 and f"job {running_id}: STOPPED" in out


def test_a_bad_file_is_refused_before_anything_is_submitted(cluster, corpus, tmp_path):
    code, out = cli(cluster, "submit", str(job_file(corpus, tmp_path, "bad", steps=6)), "--set", "train.max_steps=-1")
    assert code == 2 and "train.max_steps" in out and "submitted" not in out
