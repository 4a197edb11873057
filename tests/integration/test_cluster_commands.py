"""`orchestrator cluster up / status / down` from nothing, as a new user runs them: a local Ray head and MLflow server
on loopback, idempotent, and nothing left running after `down`."""

import subprocess
import sys

import pytest
from helpers import ANSI, REPO, free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.own_cluster]


def test_cluster_up_is_idempotent_status_reports_it_and_down_leaves_nothing(tmp_path):
    mlflow_port, dashboard_port = free_port(), free_port()
    ports = ["--mlflow-port", str(mlflow_port)]
    up = ["cluster", "up", "--state-dir", str(tmp_path), *ports, "--dashboard-port", str(dashboard_port)]
    up += ["--ray-port", str(free_port()), "--num-cpus", "2"]

    def cli(*args: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, capture_output=True, text=True, timeout=180)
        return done.returncode, ANSI.sub("", done.stdout + done.stderr)

    code, out = cli("cluster", "status", *ports, "--dashboard-port", str(dashboard_port))
    assert code == 1 and "Ray: not running" in out, out
    try:
        code, out = cli(*up)
        assert code == 0, out
        assert f"http://127.0.0.1:{dashboard_port}" in out and f"http://127.0.0.1:{mlflow_port}" in out
        code, out = cli(*up)
        assert code == 0 and "MLflow already running" in out and "Ray already running" in out, out

        code, out = cli("cluster", "status", *ports, "--dashboard-port", str(dashboard_port))
        assert code == 0, out
        assert f"MLflow http://127.0.0.1:{mlflow_port}: up" in out
        assert "(head): 2 CPUs, 0 GPUs" in out and "jobs: 0 running of 0" in out
    finally:
        code, out = cli("cluster", "down", "--state-dir", str(tmp_path))
    assert code == 0 and "Ray stopped" in out and "MLflow stopped" in out, out
    assert not (tmp_path / "mlflow.pid").exists()
    code, out = cli("cluster", "status", *ports, "--dashboard-port", str(dashboard_port))
    assert code == 1 and "not running" in out
    left = lambda: subprocess.run(["pgrep", "-fa", f"mlflow server .*--port {mlflow_port}|raylet"], capture_output=True, text=True).stdout  # noqa: E731
    wait_until(lambda: left() == "", timeout=30, what="the cluster's processes to exit")
