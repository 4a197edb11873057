"""How a job's MLflow run ends: FAILED with its (redacted) error, KILLED on Ctrl-C or SIGTERM."""

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.config.load import validate
from orchestrator.tracking.run import ends_with_outcome, start_run
from orchestrator.train.session import meanwhile

ENV_SECRET = "env-secret-41d2e8"


def test_a_run_ends_failed_with_its_error_or_killed_when_stopped(tmp_path, mlflow_uri, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_PASSWORD", ENV_SECRET)
    job = validate({"model": {"family": "gpt2", "size": "tiny"}, "data": {"paths": ["c.jsonl"]}, "train": {"max_steps": 1}, "tracking": {"uri": mlflow_uri}})
    client = MlflowClient(mlflow_uri)
    outcomes = {}
    for name, error in [("failed", ValueError(f"loss is nan near {ENV_SECRET}")), ("ctrl-c", KeyboardInterrupt()), ("sigterm", SystemExit(15))]:
        run = start_run(job, name, str(tmp_path / name), artifacts={})
        with pytest.raises(type(error)), ends_with_outcome(run):
            raise error
        outcomes[name] = client.get_run(run.run_id)
    assert outcomes["failed"].info.status == "FAILED"
    assert "ValueError: loss is nan near ***" in outcomes["failed"].data.tags["error"]
    assert ENV_SECRET not in outcomes["failed"].data.tags["error"]
    assert outcomes["ctrl-c"].info.status == "KILLED" and outcomes["sigterm"].info.status == "KILLED"


def test_work_done_meanwhile_fails_the_run_when_the_block_ends_and_never_hides_the_blocks_own_error():
    """train/session.py logs the data report while the workers start: its error raises once the block has run (the
    run then ends FAILED with it); an error of the block itself comes first."""
    ran = []

    def broken_report():
        raise OSError("disk full while logging the data report")

    with pytest.raises(OSError, match="disk full"), meanwhile(broken_report):
        ran.append("the block")
    assert ran == ["the block"]
    with pytest.raises(ValueError, match="the block's"), meanwhile(broken_report):
        raise ValueError("the block's own")
    with meanwhile(ran.append, "the report"):
        pass
    assert ran == ["the block", "the report"]
