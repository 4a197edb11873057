"""`orchestrator cluster up / down / status`: a local Ray head and an MLflow tracking server (sqlite store, local
artifact root), both on 127.0.0.1. `up` is idempotent: what already runs is left as it is.

Ray is started with MLFLOW_TRACKING_URI in its environment, so every job submitted to it logs to this server. Ray
2.60 turns token auth on for the clusters it starts: clients need RAY_AUTH_MODE=token. The head is one loopback node
(LOOPBACK_NODE): its clients need that setting too. Both are set here for the commands this runs, and by
`source cluster/env.sh` for a shell.
"""

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.app import app
from orchestrator.config import UserError
from orchestrator.local_node import LOOPBACK_NODE

cluster_app = typer.Typer(no_args_is_help=True, help="A local Ray head and MLflow tracking server, on 127.0.0.1.")
app.add_typer(cluster_app, name="cluster")

BIN = Path(sys.executable).parent  # ray and mlflow of this environment
StateDir = Annotated[Path, typer.Option(envvar="ORCHESTRATOR_STATE_DIR", metavar="DIR", help="MLflow store and artifacts, pid and log files.")]
PORTS = {"min": 1, "max": 65535, "metavar": "PORT"}
MlflowPort = Annotated[int, typer.Option(envvar="MLFLOW_PORT", help="MLflow server port.", **PORTS)]
DashboardPort = Annotated[int, typer.Option(envvar="RAY_DASHBOARD_PORT", help="Ray dashboard and job API port.", **PORTS)]
# Job statuses of Ray's job API that are not over yet.
ACTIVE = ("PENDING", "RUNNING")


def client_env(mlflow_uri: str) -> dict[str, str]:
    """The environment of a client of the local cluster, and of the head itself (its jobs inherit it)."""
    return os.environ | LOOPBACK_NODE | {"RAY_AUTH_MODE": "token", "MLFLOW_TRACKING_URI": mlflow_uri}


def ray_start_command(ray_port: int, dashboard_port: int, num_cpus: int | None, object_store_memory: int | None = None) -> list[str]:
    """`ray start` of the local head; with client_env's environment, everything it starts listens on 127.0.0.1."""
    command = [str(BIN / "ray"), "start", "--head", "--port", str(ray_port), "--disable-usage-stats"]
    command += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port)]
    command += ["--num-cpus", str(num_cpus)] if num_cpus else []
    return command + (["--object-store-memory", str(object_store_memory)] if object_store_memory else [])


def token_path(env: dict[str, str]) -> Path:
    """Where Ray reads the auth token from (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token)."""
    return Path(env.get("RAY_AUTH_TOKEN_PATH") or Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token")


def ensure_auth_token(env: dict[str, str]) -> None:
    """Generates Ray's auth token unless there is one: a token-auth head refuses to start without it. Ray writes it
    with the umask (0644 as a rule): here under umask 077, so that it is never readable by others."""
    command = [BIN / "ray", "get-auth-token", "--generate"]
    generated = subprocess.run(command, env=env, capture_output=True, text=True, umask=0o077)  # stdout: the token
    if generated.returncode:
        raise UserError(f"ray get-auth-token --generate failed: {(generated.stderr.strip().splitlines() or ['?'])[-1]}")
    restrict_token_file(env)


def restrict_token_file(env: dict[str, str]) -> None:
    """Makes a token file written before (0644) readable by its owner only."""
    path = token_path(env)
    if path.exists():
        path.chmod(0o600)


def start_ray(
    env: dict[str, str], ray_port: int, dashboard_port: int, num_cpus: int | None, object_store_memory: int | None = None
) -> subprocess.CompletedProcess:
    """Starts the local head (jobs inherit `env`, MLFLOW_TRACKING_URI with it); its GCS address is 127.0.0.1:ray_port."""
    ensure_auth_token(env)
    command = ray_start_command(ray_port, dashboard_port, num_cpus, object_store_memory)
    return subprocess.run(command, env=env, capture_output=True, text=True)


def mlflow_is_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False


def ray_is_up(env: dict[str, str]) -> bool:
    return subprocess.run([BIN / "ray", "status"], env=env, capture_output=True).returncode == 0


def start_mlflow(state_dir: Path, port: int) -> subprocess.Popen:
    """A loopback MLflow server storing in `state_dir`, once it answers."""
    command = [BIN / "mlflow", "server", "--backend-store-uri", f"sqlite:///{state_dir.resolve()}/mlflow.db"]
    command += ["--default-artifact-root", str(state_dir.resolve() / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port)]
    with open(state_dir / "mlflow.log", "a") as log:
        server = subprocess.Popen(
            command + ["--workers", "1"],  # one worker and no job runner: 2 processes instead of ~10
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
    (state_dir / "mlflow.pid").write_text(str(server.pid))
    deadline = time.monotonic() + 90
    while not mlflow_is_up(port):
        if server.poll() is not None or time.monotonic() > deadline:
            raise UserError(f"MLflow did not start on port {port}: see {state_dir / 'mlflow.log'}")
        time.sleep(0.5)
    return server


@cluster_app.command()
def up(
    state_dir: StateDir = Path(".cluster"),
    mlflow_port: MlflowPort = 5000,
    dashboard_port: DashboardPort = 8265,
    ray_port: Annotated[int, typer.Option(help="Ray head (GCS) port.", **PORTS)] = 6379,
    num_cpus: Annotated[int | None, typer.Option(metavar="N", help="CPUs Ray may use; default: all.", min=1)] = None,
) -> None:
    """Start the MLflow server and the Ray head (unless they run). Prints their URLs.

    \b
    Example:
      orchestrator cluster up
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--state-dir: {state_dir} cannot be created ({err.strerror})") from None
    env = client_env(f"http://127.0.0.1:{mlflow_port}")
    if mlflow_is_up(mlflow_port):
        print("MLflow already running")
    else:
        start_mlflow(state_dir, mlflow_port)
    if ray_is_up(env):
        print("Ray already running")
    else:
        started = start_ray(env, ray_port, dashboard_port, num_cpus)
        (state_dir / "ray-start.log").write_text(started.stdout + started.stderr)
        if started.returncode:
            raise UserError(f"ray start failed: see {state_dir / 'ray-start.log'}")
    print(f"Ray dashboard and job API: http://127.0.0.1:{dashboard_port}")
    print(f"MLflow:                    {env['MLFLOW_TRACKING_URI']}")


@cluster_app.command()
def down(state_dir: StateDir = Path(".cluster")) -> None:
    """Stop the Ray head and the MLflow server. Every Ray process of this machine stops, as with `ray stop`.

    \b
    Example:
      orchestrator cluster down
    """
    if subprocess.run([BIN / "ray", "stop"], capture_output=True).returncode == 0:
        print("Ray stopped")
    pid_file = state_dir / "mlflow.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)  # the server and its worker: one process group
            print("MLflow stopped")
        except ProcessLookupError:
            pass
        pid_file.unlink()


@cluster_app.command()
def status(mlflow_port: MlflowPort = 5000, dashboard_port: DashboardPort = 8265) -> None:
    """The nodes with their CPUs and GPUs, running jobs, and MLflow.

    \b
    Example:
      orchestrator cluster status
    """
    env = client_env(f"http://127.0.0.1:{mlflow_port}")
    print(f"MLflow {env['MLFLOW_TRACKING_URI']}: {'up' if mlflow_is_up(mlflow_port) else 'not running'}")
    if not ray_is_up(env):
        print("Ray: not running (orchestrator cluster up)")
        raise typer.Exit(1)
    os.environ.update(LOOPBACK_NODE | {"RAY_AUTH_MODE": "token"})  # read when ray is imported
    import ray  # only now
    from ray.job_submission import JobSubmissionClient

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), logging_level=logging.ERROR, log_to_driver=False)
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        own_job_id = ray.get_runtime_context().get_job_id()
    finally:
        ray.shutdown()
    for node in nodes:
        resources = node["Resources"]
        role = "head" if "node:__internal_head__" in resources else "worker"
        print(f"node {node['NodeManagerAddress']} ({role}): {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    jobs = JobSubmissionClient(f"http://127.0.0.1:{dashboard_port}").list_jobs()
    running, counted = count_jobs(jobs, own_job_id)
    print(f"jobs: {len(running)} running of {counted}" + "".join(f"\n  {job_line(job)}" for job in running))
    print(f"Ray dashboard and job API: http://127.0.0.1:{dashboard_port}")


def count_jobs(jobs: list, own_job_id: str | None = None) -> tuple[list, int]:
    """The running jobs in the job API's list, and how many jobs it counts. A driver started by hand (`python -m
    orchestrator train` joining the cluster) is a job with no submission id: counted while it runs. Ended drivers are
    not: every client of the cluster leaves one, and this command's own (`own_job_id`) may not have
    ended yet when the list is read."""
    listed = [job for job in jobs if job.job_id != own_job_id and (job.submission_id or str(job.status) in ACTIVE)]
    return [job for job in listed if str(job.status) in ACTIVE], len(listed)


def job_line(job) -> str:
    kind = "" if job.submission_id else " (a driver started by hand)"
    return f"{job.submission_id or job.job_id} {job.status}{kind}: {job.entrypoint}"
