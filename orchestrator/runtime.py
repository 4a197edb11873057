"""Connecting to Ray, and checking that the cluster can hold the job before anything is started on it."""

import os

import ray

from orchestrator.config.errors import UserError
from orchestrator.config.job import JobConfig
from orchestrator.environment import driver_data_context, ray_init_options
from orchestrator.local_node import LOOPBACK_NODE


def connect(address: str | None = None) -> str:
    """Joins the cluster at `address` (its GCS address, as `ray.init` takes it: host:6379, or auto), else the one this
    process belongs to (RAY_ADDRESS, which `ray job submit` sets), else a local head, else starts an embedded one."""
    driver_data_context()
    if ray.is_initialized():
        return "an already connected Ray cluster"
    if address := address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, **ray_init_options())
        return f"the Ray cluster at {address}"
    use_loopback_node()
    try:
        ray.init(address="auto", **ray_init_options())
        return "the local Ray cluster (ray start --head)"
    except ConnectionError:
        # With its dashboard: Ray Train frees the resources of a stopped run through the state API it serves.
        ray.init(include_dashboard=True, dashboard_host="127.0.0.1", **ray_init_options())
        return "an embedded local Ray instance"


def use_loopback_node() -> None:
    """Makes this process see the local head as the loopback node it is (local_node.py), and start an
    embedded instance as one: every server and metrics exporter of it on 127.0.0.1. Without it, a driver would look
    for the head at the machine's outward address, where nothing answers, and retry for minutes."""
    from ray._private import ray_constants

    os.environ.update(LOOPBACK_NODE)  # for the processes Ray starts from here
    ray_constants.ENABLE_RAY_CLUSTER = False  # what Ray read from it when this process imported ray


def release_orphaned_placement_groups() -> None:
    """Removes the placement groups whose job has ended, which Ray itself should have removed. A SIGKILLed sweep
    driver leaves a trial's worker group reserved for good (Ray 2.60), and every later job then waits for CPUs
    that nothing uses. Detached groups, made to outlive their job, are left alone."""
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup
    from ray.util.state import list_jobs, list_placement_groups
    from ray.util.state.exception import RayStateApiException

    try:
        ended = {job.job_id for job in list_jobs(limit=10_000) if job.status in ("SUCCEEDED", "FAILED", "STOPPED")}
        created = list_placement_groups(filters=[("state", "=", "CREATED")], detail=True, limit=10_000)
    except (RayStateApiException, ConnectionError):  # a Ray without its state API: nothing to go by
        return
    for group in created:
        if group.creator_job_id in ended and not group.is_detached:
            ray.util.remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(group.placement_group_id))))
            print(f"released placement group {group.placement_group_id} of ended job {group.creator_job_id}", flush=True)


def check_resources(job: JobConfig) -> None:
    """Ray would otherwise wait forever for workers the cluster cannot place."""
    release_orphaned_placement_groups()
    have = ray.cluster_resources()
    workers = job.scaling.min_workers or job.scaling.num_workers  # an elastic job starts with what there is
    cpus = workers * job.scaling.cpus_per_worker
    if have.get("CPU", 0) < cpus:
        raise UserError(
            f"scaling.num_workers: {workers} workers x {job.scaling.cpus_per_worker:g} CPU need {cpus:g} CPUs, the cluster has {have.get('CPU', 0):g}"
        )
    if job.scaling.use_gpu and have.get("GPU", 0) < workers:
        raise UserError(f"scaling.use_gpu: {workers} workers need {workers} GPUs, the cluster has {have.get('GPU', 0):g}")
