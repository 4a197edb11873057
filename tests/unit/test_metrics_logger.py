"""Rank 0's metrics logger against a real MLflow store: an outage loses nothing and is reported once; a resumed
run does not log a replayed step twice."""

import logging
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking import metrics as metrics_module
from orchestrator.tracking.metrics import MetricsLogger, last_logged_steps


@pytest.fixture
def run(mlflow_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setattr(metrics_module, "RETRY_EVERY_S", 0.2)
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("metrics")).info.run_id
    return mlflow_uri, client, run_id


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run_id, key))


def test_an_outage_keeps_every_metric_and_says_so_once(run, monkeypatch, caplog):
    uri, client, run_id = run
    logger = MetricsLogger(uri, run_id, system_metrics_every_s=60, flush_every_s=0.1)
    send = logger.client.log_batch

    def server_away(*args, **kwargs):
        raise ConnectionError("connection refused")

    with caplog.at_level(logging.WARNING, logger=metrics_module.__name__):
        monkeypatch.setattr(logger.client, "log_batch", server_away)
        for step in range(1, 51):
            logger.log(step, {"train/loss": 1.0 / step})
            time.sleep(0.01)
        started = time.monotonic()
        assert logger.flush() is False  # does not wait for an absent server
        assert time.monotonic() - started < 1
        assert len(logger.unsent()) == 50

        monkeypatch.setattr(logger.client, "log_batch", send)
        for step in range(51, 61):
            logger.log(step, {"train/loss": 1.0 / step})
        deadline = time.monotonic() + 10
        while logger.unsent() and time.monotonic() < deadline:
            logger.flush(timeout_s=1)
        logger.close()

    assert steps_of(client, run_id, "train/loss") == list(range(1, 61))
    warnings = [record.getMessage() for record in caplog.records]
    assert sum(message.startswith("MLflow unreachable") for message in warnings) == 1, warnings
    assert sum(message.startswith("MLflow is back") for message in warnings) == 1, warnings


def test_a_resumed_run_logs_each_step_once_and_delivers_what_its_checkpoint_held(run):
    uri, client, run_id = run
    first = MetricsLogger(uri, run_id, system_metrics_every_s=60)
    for step in range(1, 13):  # steps 1-12 reached MLflow; the checkpoint was at step 10, holding step 10's eval
        first.log(step, {"train/loss": float(step)})
    first.close()
    unsent = [("eval/loss", 0.5, 0, 10)]

    already = last_logged_steps(client, run_id)
    assert already == {"train/loss": 12}
    resumed = MetricsLogger(uri, run_id, system_metrics_every_s=60, already_logged=already, unsent=unsent)
    for step in range(11, 21):  # the replay from the checkpoint at step 10
        resumed.log(step, {"train/loss": 100.0 + step})
    resumed.close()

    history = {point.step: point.value for point in client.get_metric_history(run_id, "train/loss")}
    assert sorted(history) == list(range(1, 21))  # one value per step
    assert history[12] == 12.0 and history[13] == 113.0
    assert [(p.step, p.value) for p in client.get_metric_history(run_id, "eval/loss")] == [(10, 0.5)]


def test_system_metrics_are_sampled_into_the_run(run):
    uri, client, run_id = run
    logger = MetricsLogger(uri, run_id, system_metrics_every_s=0.2)
    time.sleep(1.0)
    logger.close()
    cpu = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(cpu) >= 2 and [point.step for point in cpu] == list(range(len(cpu)))
