"""The data report in MLflow: the stage table (an MLflow table, shown in the run's artifacts), the token-length
histogram, the report itself and the quarantined rows, plus headline figures as metrics to compare runs by."""

import tempfile
import time
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from orchestrator.data.pipeline import QUARANTINE_FILE, PreparedData

ARTIFACT_DIR = "data"


def log_data_report(uri: str, run_id: str, data: PreparedData) -> None:
    # matplotlib (half a second) imported here, in the thread that logs the report (train/session.py meanwhile)
    from orchestrator.tracking.plots import token_length_histogram

    client = MlflowClient(uri)
    report = data.report
    client.log_table(run_id, pd.DataFrame(report.stage_table()), f"{ARTIFACT_DIR}/stages.json")
    client.log_text(run_id, report.to_json(), f"{ARTIFACT_DIR}/report.json")
    client.log_text(run_id, "\n".join(report.summary_lines()) + "\n", f"{ARTIFACT_DIR}/summary.txt")
    with tempfile.TemporaryDirectory() as directory:
        plot = Path(directory) / "token_lengths.png"
        token_length_histogram(report.length_bins, report.length_counts, str(plot))
        client.log_artifact(run_id, str(plot), ARTIFACT_DIR)
    quarantine = data.directory / QUARANTINE_FILE
    if quarantine.is_file():
        client.log_artifact(run_id, str(quarantine), ARTIFACT_DIR)
    figures = {
        "rows_read": report.rows_read,
        "rows_kept": report.rows_kept,
        "rows_quarantined": report.rows_read - report.rows_kept,
        "tokens": report.tokens,
        "train_sequences": report.train_sequences,
        "val_sequences": report.val_sequences,
        "prepare_s": report.seconds,
    }
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"data/{key}", float(value), now, 0) for key, value in figures.items()])
