"""Rank 0's metrics: buffered, sent by a background thread, kept while the tracking server is away.

A training step never waits on MLflow: `log` only appends to a buffer, and a sender thread ships it in batches
every few seconds. When the server cannot be reached, the buffer keeps everything in order and the sender tries
again; the job log says so once when the outage starts and once when it ends. Metrics not yet delivered when a
checkpoint is written travel inside the checkpoint (`unsent`), so a worker lost during an outage loses nothing.

A resumed run replays the steps after its checkpoint: metrics MLflow already has for those steps are not sent
again (`already_logged`), so every metric has one value per step.
"""

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from mlflow.entities import Metric
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

MLFLOW_BATCH_LIMIT = 1000  # metrics per log_batch call
SYSTEM_PREFIX = "system/"
RETRY_EVERY_S = 5.0  # while the server is away
T = TypeVar("T")
DELIVERY_DEADLINE_S = 900.0  # artifacts at the end of a run wait this long for an absent server

log = logging.getLogger(__name__)


def last_logged_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step of every metric the run has: what a resumed run must not log again."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(point.step for point in client.get_metric_history(run_id, key)) for key in keys}


def deliver(action: Callable[[], T], what: str, deadline_s: float = DELIVERY_DEADLINE_S) -> T:
    """Runs a call to the tracking server, waiting out an outage of up to `deadline_s` (then the error is raised);
    returns what the call returns."""
    give_up_at = time.monotonic() + deadline_s
    told = False
    while True:
        try:
            result = action()
            if told:
                log.warning(f"MLflow is back: {what} delivered")
            return result
        except Exception as err:
            if time.monotonic() > give_up_at:
                raise
            if not told:
                log.warning(f"MLflow unreachable while sending {what} ({type(err).__name__}); retrying")
                told = True
            time.sleep(RETRY_EVERY_S)


class MetricsLogger:
    def __init__(
        self,
        uri: str,
        run_id: str,
        system_metrics_every_s: float,
        flush_every_s: float = 5.0,
        already_logged: dict[str, int] | None = None,
        unsent: list[tuple] = (),
    ):
        self.client = MlflowClient(uri)
        self.run_id = run_id
        self.flush_every_s = flush_every_s
        self.already_logged = dict(already_logged or {})
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)  # for the plots at the end
        self._pending: list[Metric] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._delivered = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self.outage_since: float | None = None  # monotonic time the server went away; None while it answers
        self._enqueue([Metric(*fields) for fields in unsent if not self._known(fields[0], fields[3])])

        # MLflow's own monitor stops for good at its first failed request; its samplers are reused here instead.
        self._system = SystemMetricsMonitor(run_id, sampling_interval=system_metrics_every_s, tracking_uri=uri)
        system_steps = [step for key, step in self.already_logged.items() if key.startswith(SYSTEM_PREFIX)]
        self._system_step = max(system_steps, default=-1) + 1
        self._threads = [
            threading.Thread(target=self._send_loop, name="metrics-sender", daemon=True),
            threading.Thread(target=self._sample_loop, name="system-metrics", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _known(self, key: str, step: int) -> bool:
        return step <= self.already_logged.get(key, -1)

    def _enqueue(self, metrics: list[Metric]) -> None:
        with self._lock:
            self._pending.extend(metrics)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now_ms = int(time.time() * 1000)
        fresh = []
        for key, value in metrics.items():
            if not key.startswith(SYSTEM_PREFIX):  # the plots' data; the sampler thread's metrics are not plotted
                self.history[key].append((step, float(value)))
            if not self._known(key, step):
                fresh.append(Metric(key, float(value), now_ms, step))
        self._enqueue(fresh)

    def unsent(self) -> list[tuple]:
        """What the server does not have yet, as (key, value, timestamp, step): saved with a checkpoint."""
        with self._lock:
            return [(metric.key, metric.value, metric.timestamp, metric.step) for metric in self._pending]

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Asks the sender to ship everything now and waits until it has, unless the server is away: then it returns
        at once, because training must not wait for it. True when nothing is pending."""
        self._wake.set()
        with self._delivered:
            return self._delivered.wait_for(lambda: not self._pending or self.outage_since is not None, timeout_s) and (not self._pending)

    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.flush_every_s if self.outage_since is None else RETRY_EVERY_S)
            self._wake.clear()
            self._send_pending()

    def _send_pending(self) -> None:
        while True:
            with self._lock:
                batch = self._pending[:MLFLOW_BATCH_LIMIT]
            if not batch:
                break
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as err:
                self._outage(err)
                return
            with self._delivered:
                del self._pending[: len(batch)]
                if self.outage_since is not None:
                    log.warning(f"MLflow is back after {time.monotonic() - self.outage_since:.0f} s; sending the buffered metrics")
                    self.outage_since = None
                self._delivered.notify_all()
        with self._delivered:
            self._delivered.notify_all()

    def _outage(self, err: Exception) -> None:
        with self._delivered:
            if self.outage_since is None:
                self.outage_since = time.monotonic()
                log.warning(f"MLflow unreachable ({type(err).__name__}); training goes on and metrics are kept until it is back ({len(self._pending)} pending)")
            self._delivered.notify_all()

    def _sample_loop(self) -> None:
        while not self._stopping.wait(self._system.sampling_interval):
            self._system.collect_metrics()
            sample = self._system.aggregate_metrics()
            for monitor in self._system.monitors:
                monitor.clear_metrics()
            self.log(self._system_step, {f"{SYSTEM_PREFIX}{name}": value for name, value in sample.items()})
            self._system_step += 1

    def close(self) -> None:
        """Stops sampling and delivers everything, waiting out an outage up to DELIVERY_DEADLINE_S."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()

        def send_rest() -> None:
            self._send_pending()
            if self._pending:
                raise ConnectionError(f"{len(self._pending)} metrics not delivered")

        deliver(send_rest, "the last metrics")
