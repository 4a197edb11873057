"""One real Ray cluster and one real MLflow tracking server for the whole test session, on free loopback ports,
started and stopped here: nothing is left running. Every test uses its own experiment and directories."""

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port, stop_running_jobs

from orchestrator.cli.cluster import client_env, start_mlflow, start_ray

BIN = Path(sys.executable).parent
# The head's health checks of the other nodes: a lost node is noticed after 3 missed checks 1 s apart instead of Ray's
# 5 checks 3 s apart (tests/integration/test_faults.py loses nodes three times). The rest of the cluster is as `up`
# starts it.
NODE_LOSS_NOTICED_IN_3_S = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class TrackingServer:
    """A real `mlflow server` on a free loopback port, started as `orchestrator cluster up` starts it, which a test
    may stop and start again (an outage)."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_mlflow(self.root, self.port)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def pytest_collection_modifyitems(items):
    """Tests with a cluster of their own (`orchestrator cluster up` / `down`) go first, before the session's cluster
    starts: `ray stop` stops every Ray process of the machine, and `ray status` would find either."""
    items.sort(key=lambda item: item.get_closest_marker("own_cluster") is None)


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory) -> TrackingServer:
    server = TrackingServer(tmp_path_factory.mktemp("mlflow"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tracking_server) -> str:
    return tracking_server.url


@dataclass(frozen=True)
class Cluster:
    address: str  # GCS address, for drivers
    dashboard: str  # job API, for `ray job submit`
    env: dict  # environment of a client of this cluster


@pytest.fixture(scope="session")
def cluster(mlflow_server) -> Cluster:
    """Started as `orchestrator cluster up` starts it (its functions): a loopback node with token auth, whose jobs
    inherit MLFLOW_TRACKING_URI."""
    env = client_env(mlflow_server) | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    ray = str(BIN / "ray")
    if subprocess.run([ray, "status"], env=env, capture_output=True).returncode == 0:
        pytest.fail("a Ray cluster is already running here; stop it (orchestrator cluster down) so the tests can use their own")
    ray_port, dashboard_port = free_port(), free_port()
    started = start_ray(env | NODE_LOSS_NOTICED_IN_3_S, ray_port, dashboard_port, num_cpus=2)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        address = f"127.0.0.1:{ray_port}"
        yield Cluster(address, f"http://127.0.0.1:{dashboard_port}", env | {"RAY_ADDRESS": address})
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(request):
    """A job that a failed test leaves running would take the CPUs the next tests need, and fail them too."""
    yield
    if "cluster" in request.fixturenames:
        if stopped := stop_running_jobs(request.getfixturevalue("cluster")):
            print(f"stopped jobs left running: {stopped}")
