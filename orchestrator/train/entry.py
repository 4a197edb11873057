"""The function each Ray Train worker runs, in a module the driver imports without the workers' libraries
(DeepSpeed, transformers): Ray pickles a function by its module and name, so only the workers import the loop."""

from orchestrator.train.local import end_process_group


def train_worker(config: dict) -> None:
    from orchestrator.train.loop import train_loop  # the workers' libraries, imported on the workers only

    train_loop(config)


def train_worker_then_end_group(config: dict) -> None:
    """A run in the caller's process (Ray Train's local mode), which outlives the run (Tune reuses a trial's): its
    process group ends with the run."""
    try:
        train_worker(config)
    finally:
        end_process_group()
