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

from orchestrator.train.manifest import MANIFEST

TAG = "state"  # DeepSpeed sub-directory of each checkpoint


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # global micro batches of `epoch` already consumed
    tokens: int = 0  # training tokens seen by all workers


def _rng_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rng_rank{rank}.pt")


def save(engine, progress: Progress, rank: int, unsent_metrics: dict | None = None, manifest: str | None = None) -> str:
    """Writes this rank's part of the checkpoint into a new local directory and returns it. `unsent_metrics`: rank 0's
    metrics the tracking server has not received yet ({"run_id", "metrics"}), delivered by whoever resumes that run.
    `manifest` (rank 0): what wrote the checkpoint (train/manifest.py), written last."""
    directory = tempfile.mkdtemp(prefix="orchestrator-ckpt-")
    state = {"progress": asdict(progress), "unsent_metrics": unsent_metrics or {}}
    engine.save_checkpoint(directory, tag=TAG, client_state=state)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save(rng, _rng_file(directory, rank))
    if manifest is not None:
        with open(os.path.join(directory, MANIFEST), "w") as out:
            out.write(manifest)
    return directory


def restore(engine, checkpoint, rank: int) -> tuple[Progress, dict] | None:
    """Loads a Ray Train checkpoint into the engine: where training stood, and the metrics it had not delivered.
    None when the run starts fresh."""
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
    return Progress(**client_state["progress"]), client_state.get("unsent_metrics") or {}
