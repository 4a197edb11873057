"""Every TCP socket that the session's cluster listens on is on loopback: the Ray head started as `orchestrator cluster
up` starts it (GCS, raylet, dashboard and its agents, the Prometheus metrics exporters, the Ray Client server), a job's
driver and workers, and the MLflow server. Read from the kernel's socket table while a job runs. And the cluster's
auth token is its owner's only."""

import ipaddress
import json
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import ANSI, ray_job

from orchestrator.cli.cluster import token_path

pytestmark = pytest.mark.integration

DRIVER = """
import time, ray
ray.init()
ray.get([ray.remote(lambda: 1).remote() for _ in range(2)])
print("workers up", flush=True)
time.sleep(300)
"""


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback  # ::ffff:127.0.0.1: a dual-stack socket


def cluster_processes(gcs_port: int, mlflow_pid: int) -> list[psutil.Process]:
    """The head's processes (each names the GCS port on its command line; `ray start` has exited, so they have no
    common parent), MLflow's, and every descendant of them: agents, workers, job supervisors and drivers."""
    names_gcs = re.compile(rf"(--gcs_server_port=|--gcs-address=\S*:|--address=\S*:){gcs_port}\b")
    roots = [psutil.Process(mlflow_pid)]
    for process in psutil.process_iter(["cmdline"]):
        if names_gcs.search(" ".join(process.info["cmdline"] or [])):
            roots.append(process)
    found = {}
    for root in roots:
        for process in [root, *root.children(recursive=True)]:
            found[process.pid] = process
    return list(found.values())


def session_dir(processes: list[psutil.Process]) -> Path:
    """The head's session directory, named by its GCS server's log directory (not session_latest: another Ray
    instance of this machine may have started since)."""
    for process in processes:
        try:
            command = " ".join(process.cmdline())
        except psutil.NoSuchProcess:  # a worker that ended meanwhile
            continue
        if match := re.search(r"--log_dir=(\S+)/logs\b", command):
            return Path(match.group(1))
    raise AssertionError("no GCS server among the cluster's processes")


def listening_sockets(processes: list[psutil.Process]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process name) of each listening TCP socket of these processes."""
    rows = []
    for process in processes:
        try:
            name = process.name()
            sockets = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:  # a worker that ended meanwhile
            continue
        rows += [(s.laddr.ip, s.laddr.port, process.pid, name) for s in sockets if s.status == psutil.CONN_LISTEN]
    return sorted(rows, key=lambda row: (row[3], row[1]))


def test_every_listening_socket_of_the_cluster_is_on_loopback(cluster, tracking_server):
    submission = "listening-sockets"
    command = ["ray", "job", "submit", "--no-wait", "--submission-id", submission, "--address", cluster.dashboard]
    submitted = subprocess.run(command + ["--", sys.executable, "-c", DRIVER], env=cluster.env, capture_output=True, text=True)
    assert submitted.returncode == 0, ANSI.sub("", submitted.stdout + submitted.stderr)
    deadline = time.monotonic() + 120
    while "workers up" not in ray_job(cluster, "logs", submission):
        assert time.monotonic() < deadline, ray_job(cluster, "logs", submission)
        time.sleep(1)
    try:
        processes = cluster_processes(int(cluster.address.rsplit(":", 1)[1]), tracking_server.process.pid)
        rows = listening_sockets(processes)
    finally:
        ray_job(cluster, "stop", submission)
    table = "\n".join(f"{address}:{port:<6} {pid:>8} {name}" for address, port, pid, name in rows)
    exposed = [f"{address}:{port} {name}" for address, port, _, name in rows if not is_loopback(address)]
    assert not exposed, f"listening beyond loopback: {exposed}\n{table}"

    # The test saw what it checks: each kind of process, and the metrics exporters Prometheus would scrape. Ray titles
    # an actor's process ray::Class, and ray::Class.method while a method runs (the job supervisor's `run`, at times).
    names = {name.split(".")[0] if name.startswith("ray::") else name for *_, name in rows}
    for expected in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::JobSupervisor"):
        assert expected in names, table
    assert any(name.startswith("ray::") and "Agent" not in name and "Supervisor" not in name for name in names), table
    assert int(tracking_server.url.rsplit(":", 1)[1]) in {port for _, port, *_ in rows}, table
    discovery = json.loads((session_dir(processes) / "prom_metrics_service_discovery.json").read_text())
    exporters = [target for group in discovery for target in group["targets"]]
    assert len(exporters) == 3, exporters  # the agent's, the dashboard's and the autoscaler's
    for target in exporters:
        assert int(target.rsplit(":", 1)[1]) in {port for _, port, *_ in rows}, f"{target} not found in\n{table}"
    print(table)


def test_the_clusters_auth_token_is_readable_by_its_owner_only(cluster):
    assert stat.S_IMODE(token_path(cluster.env).stat().st_mode) == 0o600
