"""The function each Ray Train worker runs, in a module the driver imports without the workers' libraries
(DeepSpeed, transformers): Ray pickles a function by its module and name, so only the workers import the loop."""

import psutil

from orchestrator.train.local import end_process_group


def train_worker(config: dict) -> None:
    timeline = config["plan"].timeline
    timeline.mark("worker_processes", at=psutil.Process().create_time())  # Ray Train started this process
    timeline.mark("worker_start")  # Ray's worker, Train's actor and torch.distributed are up: this function runs
    from orchestrator.train.loop import train_loop  # the workers' libraries, imported on the workers only

    timeline.mark("worker_imports")
    train_loop(config)


def train_worker_then_end_group(config: dict) -> None:
    """A run in the caller's process (Ray Train's local mode), which outlives the run (Tune reuses a trial's): its
    process group ends with the run."""
    try:
        train_worker(config)
    finally:
        end_process_group()
