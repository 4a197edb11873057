"""Checkpoints: DeepSpeed's own state (model, optimizer, per-rank ZeRO shards) plus what the loop
needs to continue exactly where it stopped: the step counter, the data position and every rank's RNG state.

Every rank saves into its own local directory and reports it to Ray Train, which merges them into one
checkpoint in the run's storage and keeps the newest `checkpoint.keep`.
"""

import os
import random
import tempfile
from dataclasses import asdict, dataclass

import numpy as np
import torch

TAG = "state"  # DeepSpeed sub-directory of each checkpoint


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # global micro batches of `epoch` already consumed
    tokens: int = 0  # training tokens seen by all workers


def _rng_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rng_rank{rank}.pt")


def save(engine, progress: Progress, rank: int) -> str:
    """Writes this rank's part of the checkpoint into a new local directory and returns it."""
    directory = tempfile.mkdtemp(prefix="orchestrator-ckpt-")
    engine.save_checkpoint(directory, tag=TAG, client_state={"progress": asdict(progress)})
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, _rng_file(directory, rank))
    return directory


def restore(engine, checkpoint, rank: int) -> Progress | None:
    """Loads a Ray Train checkpoint into the engine; None when the run starts fresh."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        # The LR schedule is rebuilt from the job instead (engine.restart_schedule), so a resumed job runs with the
        # learning rate and schedule it asks for now, e.g. the ones PBT just mutated.
        _, client_state = engine.load_checkpoint(directory, tag=TAG, load_lr_scheduler_states=False)
        rng = torch.load(_rng_file(directory, rank), weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return Progress(**client_state["progress"])
