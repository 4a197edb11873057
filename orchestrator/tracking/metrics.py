"""Rank 0's metrics: buffered and sent asynchronously, so a training step never waits on the tracking server.

A synchronous log_metric costs tens of milliseconds against a remote server; here one batch goes out every
few seconds on MLflow's background thread. System metrics (CPU, memory, GPU) come from MLflow's own monitor.
"""

import time
from collections import defaultdict

import mlflow
from mlflow.entities import Metric
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

MLFLOW_BATCH_LIMIT = 1000  # metrics per log_batch call


class MetricsLogger:
    def __init__(self, uri: str, run_id: str, system_metrics_every_s: float, flush_every_s: float = 5.0):
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self.pending: list[Metric] = []
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)  # for the plots at the end
        self.last_flush = time.monotonic()
        self.system = SystemMetricsMonitor(
            run_id, sampling_interval=system_metrics_every_s, resume_logging=True, tracking_uri=uri
        )
        self.system.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        for key, value in metrics.items():
            self.pending.append(Metric(key, float(value), now_ms, step))
            self.history[key].append((step, float(value)))
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self.flush()

    def flush(self, wait: bool = False) -> None:
        """Sends what is pending on MLflow's background thread; `wait` also waits until the server has it."""
        for start in range(0, len(self.pending), MLFLOW_BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=self.pending[start : start + MLFLOW_BATCH_LIMIT], synchronous=False)
        self.pending = []
        self.last_flush = time.monotonic()
        if wait:
            mlflow.flush_async_logging()

    def close(self) -> None:
        self.flush(wait=True)
        self.system.finish()
