"""The log of a real 2-worker job, as the job API keeps it, is one a person reads: at least 80% of its lines are the
framework's own (tests/job_log.py), no colour codes, and the MLflow run's URL once, as its last line."""

import pytest
from helpers import job_api, start_job, tiny_job, wait_for_job, write_job
from job_log import MLFLOW_RUN_URL, is_framework_line, lines_of

pytestmark = pytest.mark.integration

FRAMEWORK_SHARE = 0.8


def test_a_job_log_is_the_frameworks_own(cluster, corpus, tmp_path):
    job = tiny_job(
        corpus,
        train={"max_steps": 20, "log_every": 5, "eval_every": 10},  # the quickstart's proportions, in 20 steps
        checkpoint={"every_steps": 10, "dir": str(tmp_path / "runs")},
        tracking={"experiment": "job-log"},
    )
    start_job(cluster, "job-log", "train", str(write_job(tmp_path / "job.yaml", job)))
    assert wait_for_job(cluster, "job-log") == "SUCCEEDED"
    log = job_api(cluster, "job-log/logs")["logs"]

    lines = lines_of(log)
    noise = [line for line in lines if not is_framework_line(line)]
    assert len(lines) - len(noise) >= FRAMEWORK_SHARE * len(lines), "not the framework's:\n" + "\n".join(noise)
    assert "\x1b" not in log
    assert [line for line in lines if MLFLOW_RUN_URL.search(line)] == [lines[-1]], log
