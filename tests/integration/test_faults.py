"""Faults done for real to jobs submitted through the job API of a real Ray cluster, with real DeepSpeed and a
real MLflow server: a SIGKILLed worker, a tracking server that goes away for 15 s,
`ray job stop`, a lost node. A job either
finishes with exactly the steps it asked for, each logged once in its one MLflow run, or stops KILLED with a
checkpoint it resumes from."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import job_status, ray_job, ray_state, start_job, tiny_job, wait_for_job, wait_until, write_job
from mlflow.tracking import MlflowClient

from orchestrator.train import checkpoint

pytestmark = pytest.mark.integration
EXPERIMENT = "faults"
# Slow enough steps (about 0.1 s on 2 CPU workers) that a fault lands in the middle of the run.
BIGGER = {"family": "gpt2", "size": "tiny", "dims": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 512, "max_positions": 64}}


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    return MlflowClient(mlflow_server)


def fault_job(tmp: Path, corpus: Path, name: str, max_steps: int, every_steps: int, model: dict = BIGGER, scaling: dict | None = None, **train) -> Path:
    """A job that evaluates and checkpoints every `every_steps` and logs every step; `train` adds to its train section."""
    job = tiny_job(
        corpus,
        model=model,
        train={"max_steps": max_steps, "eval_every": every_steps, "eval_at_start": False, "log_every": 1, "schedule": {"name": "constant", "warmup_steps": 2}}
        | train,
        checkpoint={"dir": str(tmp / "runs"), "every_steps": every_steps, "keep": 2, "max_failures": 2},
        tracking={"experiment": EXPERIMENT, "run_name": name, "system_metrics_every_s": 2},
        **({"scaling": scaling} if scaling else {}),
    )
    return write_job(tmp / f"{name}.yaml", job)


def find_run_id(client: MlflowClient, run_name: str) -> str | None:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.`orchestrator.run_name` = '{run_name}'")
    assert len(runs) <= 1, "one MLflow run per job"
    return runs[0].info.run_id if runs else None


def last_step(client: MlflowClient, run_id: str, key: str = "train/loss") -> int:
    return max((point.step for point in client.get_metric_history(run_id, key)), default=0)


def wait_for_step(client: MlflowClient, run_name: str, step: int, timeout: float = 300) -> str:
    """Waits until the run has logged `step`; returns its id."""
    run_id = wait_until(lambda: find_run_id(client, run_name), timeout, f"MLflow run {run_name}")
    wait_until(lambda: last_step(client, run_id) >= step, timeout, f"{run_name} reaching step {step}")
    return run_id


def assert_each_step_once(client: MlflowClient, run_id: str, max_steps: int) -> dict[int, float]:
    points = client.get_metric_history(run_id, "train/loss")
    steps = sorted(point.step for point in points)
    assert steps == list(range(1, max_steps + 1)), f"{len(steps)} points for {max_steps} steps"
    return {point.step: point.value for point in points}


def resumed_step(logs: str) -> int:
    return int(re.search(r"resumed from step (\d+)", logs).group(1))


def train_worker_pids(cluster) -> list[int]:
    """Ray Train's worker processes, found through Ray's state API."""
    return [actor["pid"] for actor in ray_state(cluster, "actors", "class_name=RayTrainWorker", "state=ALIVE", detail=True)]


def registered_step(run_dir: Path) -> int:
    """The step of the newest checkpoint Ray Train has registered (its persisted checkpoint manager state)."""
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    return snapshot["latest_checkpoint_result"]["metrics"]["step"]


def local_checkpoints() -> set[str]:
    """Checkpoints being written: each rank saves into a fresh local directory, then reports (uploads) it to Ray Train."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), f"{checkpoint.LOCAL_PREFIX}*")))


def test_a_worker_killed_while_checkpointing_is_replaced_and_the_job_finishes_in_the_same_run(cluster, corpus, client, tmp_path):
    """SIGKILL one Train worker in the middle of writing a checkpoint: that checkpoint never counts, the worker group
    restarts from the one before, and the run ends with each of its 160 steps logged once. (A damaged checkpoint,
    refused: tests/inprocess/test_loop.py.)"""
    max_steps, every = 160, 40
    job = fault_job(tmp_path, corpus, "killed-worker", max_steps, every)
    start_job(cluster, "fault-killed-worker", "train", str(job))
    run_id = wait_for_step(client, "killed-worker", every + 10)
    pids = train_worker_pids(cluster)
    before = local_checkpoints()
    wait_until(lambda: local_checkpoints() - before, 120, "a checkpoint starting", every=0.01)
    os.kill(pids[-1], signal.SIGKILL)
    killed_at = time.monotonic()
    complete = registered_step(tmp_path / "runs" / "killed-worker")  # the checkpoint before the one cut short

    assert wait_for_job(cluster, "fault-killed-worker") == "SUCCEEDED"
    recovered_s = time.monotonic() - killed_at
    logs = ray_job(cluster, "logs", "fault-killed-worker")
    assert resumed_step(logs) == complete  # the last complete checkpoint, not the one cut short
    losses = assert_each_step_once(client, run_id, max_steps)  # replayed steps are not logged twice
    assert losses[complete + 1] < 0.8 * losses[1]  # training went on from the checkpoint, not from scratch
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len([path for path in (tmp_path / "runs" / "killed-worker").glob("checkpoint_*") if path.is_dir()]) == 2  # keep
    print(f"killed worker: cut the step-{complete + every} checkpoint, resumed from step {complete}; the job ended {recovered_s:.0f} s after the kill")


def test_a_tracking_outage_loses_nothing_then_ray_job_stop_kills_the_run(cluster, corpus, client, tracking_server, tmp_path):
    """MLflow goes away for 15 s: training goes on, and what it logged then reaches the server when it is back,
    each step once; the job log says so once each way. Then `ray job stop`: the run is KILLED and its checkpoint
    stays registered, for the same job submitted again to resume from (as tests/integration/test_training.py
    does; `--restart` instead: tests/unit/test_names_and_paths.py)."""
    max_steps, every = 2000, 100
    path = fault_job(tmp_path, corpus, "outage", max_steps, every)
    start_job(cluster, "fault-outage", "train", str(path))
    run_id = wait_for_step(client, "outage", 20)
    tracking_server.stop()
    stopped_at = time.time()
    time.sleep(15)
    assert job_status(cluster, "fault-outage") == "RUNNING"
    tracking_server.start()
    restarted_at = time.time()

    during = wait_until(
        lambda: [p for p in client.get_metric_history(run_id, "train/loss") if stopped_at * 1000 < p.timestamp < restarted_at * 1000],
        60,
        "the metrics of the outage arriving",
    )
    assert len(during) > 10, "training went on during the outage, and what it logged then arrived"
    system = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert any(stopped_at * 1000 < p.timestamp < restarted_at * 1000 for p in system)
    last = wait_until(lambda: (step := last_step(client, run_id)) > max(p.step for p in during) and step, 60, "steps after the outage")
    ray_job(cluster, "stop", "fault-outage")
    assert wait_for_job(cluster, "fault-outage") == "STOPPED"
    assert wait_until(lambda: client.get_run(run_id).info.status == "KILLED", 30, "run marked KILLED")
    logs = ray_job(cluster, "logs", "fault-outage")
    assert logs.count("MLflow unreachable") == 1 and logs.count("MLflow is back") == 1, logs[-3000:]
    steps = [p.step for p in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == list(range(1, max(steps) + 1)) and max(steps) >= last  # each step once, none missing
    assert registered_step(tmp_path / "runs" / "outage") >= every
    print(f"outage: {len(during)} steps trained and logged while MLflow was away for {restarted_at - stopped_at:.0f} s")


def alive_nodes(cluster) -> int:
    return len(ray_state(cluster, "nodes", "state=ALIVE"))


# The session's head is a loopback node (orchestrator/local_node.py), which Ray lets no node join: it would take
# 127.0.0.1, the head's address and the node's, for this machine's outward address, where nothing listens. This is
# Ray's own `ray start`, told to keep 127.0.0.1 as given.
JOIN_LOOPBACK_HEAD = (
    "import sys, ray._private.services as services; services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.exit(main())"
)


def join_node(cluster, log: Path) -> subprocess.Popen:
    """A second Ray node on this machine with 2 CPUs, joining the head; its processes share one process group. It
    has a temp dir of its own, as a real node would: sharing the head's would share (and clean up) its files."""
    temp_dir = tempfile.mkdtemp(prefix="ray-node-")  # short: Ray's socket paths must fit in 107 characters
    with open(log, "a") as out:
        node = subprocess.Popen(
            [
                sys.executable,
                "-c",
                JOIN_LOOPBACK_HEAD,
                "start",
                "--address",
                cluster.address,
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                "2",
                "--disable-usage-stats",
                "--block",
                "--temp-dir",
                temp_dir,
            ],
            env=cluster.env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"},  # under "0", `ray start --address` refuses
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node.temp_dir = temp_dir
    wait_until(lambda: alive_nodes(cluster) == 2, 90, "the second node joining")
    return node


def kill_node(cluster, node: subprocess.Popen) -> None:
    """SIGKILL to every process of the node at once: a machine that is gone. Returns once the head has noticed (after
    3 missed health checks, conftest.py): until then it may still place tasks there, which would die with the node."""
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:  # killed already
        pass
    node.wait()
    shutil.rmtree(node.temp_dir, ignore_errors=True)
    wait_until(lambda: alive_nodes(cluster) == 1, 90, "the head noticing the lost node")


# Ray Train sizes an elastic group by the resources Ray's autoscaling coordinator reserves it: one actor per cluster,
# made by the first Ray Data or elastic job, whose view of the nodes is refreshed every 20 s (its TICK_INTERVAL_S).
# This refreshes it now, where it exists yet. With `forget`, it first drops the requests of jobs that ended: a job
# killed while its Ray Data executor ran (an earlier test's) never cancels its request, which holds CPUs for 180 s
# ahead of any later request, and an elastic job submitted meanwhile would start on fewer nodes than there are.
REFRESH_COORDINATOR = """
import sys
import ray
ray.init(logging_level="ERROR")
try:
    coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
except ValueError:  # no job has made it: the first one makes it, with a fresh view
    pass
else:
    def refresh(actor, forget):
        left = len(actor._ongoing_reqs)
        if forget:  # expired now: the tick purges them as it would have after 180 s
            for request in actor._ongoing_reqs.values():
                request.expiration_time = 0
        actor._tick()
        return left
    print(ray.get(coordinator.__ray_call__.remote(refresh, sys.argv[1] == "forget")))
"""


def refresh_elastic_view(cluster, *, forget: bool = False) -> None:
    """`forget` only while no job runs: every request the coordinator holds then is an ended job's."""
    done = subprocess.run(
        [sys.executable, "-c", REFRESH_COORDINATOR, "forget" if forget else "keep"],
        env=cluster.env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    print(f"the autoscaling coordinator held {done.stdout.strip() or 'no'} request(s)")


def lose_a_node(cluster, corpus, client, tmp_path, name: str, *, elastic: bool) -> str:
    """Runs a job on a local two-node cluster, the head and a second `ray start --address` on this machine (2 CPUs
    each), and SIGKILLs the second node's processes mid-run. A fixed-size job (2 workers, one per node:
    STRICT_SPREAD) is given a node back after it has waited a while. An elastic job (2 workers of 2 CPUs, 1 at least:
    each node fits one) goes on without it: it cannot be STRICT_SPREAD, because Ray Train sizes an elastic group by
    the CPUs alone. Returns the job's log."""
    max_steps, every = 120, 30
    if elastic:
        scaling = {"num_workers": 2, "min_workers": 1, "cpus_per_worker": 2}
    else:
        scaling = {"num_workers": 2, "placement": "STRICT_SPREAD"}
    train = {"grad_accum_steps": 2}  # 4 micro batches per step, shared by the workers there are
    path = fault_job(tmp_path, corpus, name, max_steps, every, model=tiny_job(corpus)["model"], scaling=scaling, **train)
    node = join_node(cluster, tmp_path / "node.log")
    if elastic:  # else the job could start on the head alone, and lose nothing with the node
        refresh_elastic_view(cluster, forget=True)
    try:
        # Ray Train waits 60 s for a worker group it cannot place before it tries again (or, elastic, smaller): 5 s here,
        # where nothing waits on an autoscaler and a placement that can be made is made in milliseconds
        start_job(cluster, f"fault-{name}", "train", str(path), env_vars={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "5"})
        run_id = wait_for_step(client, name, every + 10)
        lost_at = time.monotonic()
        kill_node(cluster, node)
        if elastic:  # else the group could be tried at its old size first, and wait a worker-group start timeout
            refresh_elastic_view(cluster)
        else:
            assert job_status(cluster, f"fault-{name}") == "RUNNING"  # waiting for capacity
            node = join_node(cluster, tmp_path / "node.log")
        assert wait_for_job(cluster, f"fault-{name}") == "SUCCEEDED"
        print(f"{name}: finished {time.monotonic() - lost_at:.0f} s after the node was lost")
        logs = ray_job(cluster, "logs", f"fault-{name}")
        _, on_both_nodes, after = logs.partition("2 workers on 2 node(s)")
        assert on_both_nodes and "resumed from step" in after, logs  # both nodes at first, then a resume
        assert resumed_step(logs) >= every
        assert_each_step_once(client, run_id, max_steps)
        assert client.get_run(run_id).info.status == "FINISHED"
        return logs
    finally:
        kill_node(cluster, node)


def test_a_job_that_lost_a_node_waits_for_capacity_and_resumes(cluster, corpus, client, tmp_path):
    """With a fixed worker count the job waits, RUNNING, retrying its worker group, and resumes from its checkpoint
    once a node comes back, again one worker per node."""
    logs = lose_a_node(cluster, corpus, client, tmp_path, "lost-node", elastic=False)
    assert re.search(r"resumed from step \d+ .* with 2 workers", logs)
    assert logs.count("2 workers on 2 node(s)") == 2


def test_an_elastic_job_that_lost_a_node_goes_on_with_fewer_workers(cluster, corpus, client, tmp_path):
    """With scaling.min_workers the job resumes at once on the worker left on the head, accumulating 4 micro batches
    instead of 2, so the global batch (and the steps it counts) stay the same."""
    logs = lose_a_node(cluster, corpus, client, tmp_path, "elastic", elastic=True)
    assert re.search(r"resumed from step \d+ .* with 1 workers", logs) and "1 workers on 1 node(s)" in logs
