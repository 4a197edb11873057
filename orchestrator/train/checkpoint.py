"""Checkpoints: DeepSpeed's own state (model, optimizer, per-rank ZeRO shards) plus what the loop
needs to continue exactly where it stopped: the step counter, the data position and every rank's RNG state.

Every rank saves into its own local directory and reports it to Ray Train, which merges them into one
checkpoint in the run's storage and keeps the newest `checkpoint.keep`.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import stat
import tempfile
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import torch

from orchestrator.train.manifest import MANIFEST, manifest_text
from orchestrator.train.results import TrainRun, TuneTrial
from orchestrator.train.worker import Progress, Worker

if TYPE_CHECKING:
    from orchestrator.train.reporting import SilentReporter

TAG = "state"  # DeepSpeed sub-directory of each checkpoint
LOCAL_PREFIX = "orchestrator-ckpt-"  # a rank's local copy, removed once Ray Train has it
LOCAL_MARKER = ".orchestrator-local-copy"  # in every local copy: the mark of one `save` made


def remove_orphans() -> None:
    """Local checkpoint copies left by workers that were killed while saving (their pid is in the name). Only a real
    directory of this user's carrying the marker `save` writes first is removed: the temporary directory is shared,
    and anyone can make an entry of that name (a link to elsewhere, someone else's files)."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{LOCAL_PREFIX}*-*")):
        pid = os.path.basename(path)[len(LOCAL_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _is_running(int(pid)) and _is_own_local_copy(path):
            shutil.rmtree(path, ignore_errors=True)


def _is_own_local_copy(path: str) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and os.path.isfile(os.path.join(path, LOCAL_MARKER))


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class UnusableCheckpoint(RuntimeError):
    """A checkpoint that is corrupt, incomplete or of another model."""


def _rng_file(directory: str, rank: int) -> str:
    return os.path.join(directory, f"rng_rank{rank}.pt")


def has_frozen_parameters(engine) -> bool:
    return any(not parameter.requires_grad for parameter in engine.module.parameters())


def save(engine, progress: Progress, rank: int, unsent_metrics: dict | None = None, manifest: str | None = None) -> str:
    """Writes this rank's part of the checkpoint into a new local directory and returns it. `unsent_metrics`: rank 0's
    metrics the tracking server has not received yet ({"run_id", "metrics"}), delivered by whoever resumes that run.
    `manifest` (rank 0): what wrote the checkpoint (train/manifest.py), written last."""
    remove_orphans()
    directory = tempfile.mkdtemp(prefix=f"{LOCAL_PREFIX}{os.getpid()}-")
    open(os.path.join(directory, LOCAL_MARKER), "w").close()  # first: what remove_orphans may delete
    state = {"progress": asdict(progress), "unsent_metrics": unsent_metrics or {}}
    # frozen weights (LoRA's base model) are the pretrained model's, which a resumed job loads again
    engine.save_checkpoint(directory, tag=TAG, client_state=state, exclude_frozen_parameters=has_frozen_parameters(engine))
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
        try:
            # The LR schedule is rebuilt from the job instead (engine.restart_schedule), so a resumed job runs with the
            # learning rate and schedule it asks for now, e.g. the ones PBT just mutated.
            loaded, client_state = engine.load_checkpoint(
                directory, tag=TAG, load_lr_scheduler_states=False, load_module_strict=not has_frozen_parameters(engine)
            )
            if loaded is None:  # DeepSpeed only warns when the state is missing
                raise FileNotFoundError(f"no DeepSpeed state under {TAG}/")
            rng = torch.load(_rng_file(directory, rank), weights_only=False)
        except Exception as err:
            raise UnusableCheckpoint(
                f"checkpoint {checkpoint.path} cannot be loaded into this job's model, so it is refused "
                f"({type(err).__name__}: {str(err)[:500]}); submit with --restart to start over"
            ) from err
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return Progress(**client_state["progress"]), client_state.get("unsent_metrics") or {}


class Checkpointer:
    """When a worker saves (every checkpoint.every_steps and at the last step) and what: every rank its part, with the
    metrics rank 0's reporter has not delivered yet; rank 0 adds the manifest."""

    def __init__(self, worker: Worker, reporter: SilentReporter):
        self.worker, self.reporter = worker, reporter

    def due(self, step: int) -> bool:
        every = self.worker.job.checkpoint.every_steps
        return step == self.worker.total_steps or bool(every and step % every == 0)

    def save(self) -> str:
        """This rank's part, in a local directory that `report_to_ray` hands over to Ray Train."""
        worker = self.worker
        manifest = manifest_text(worker.job, worker.progress.step) if worker.rank == 0 else None
        return save(worker.engine, worker.progress, worker.rank, self.reporter.unsent(), manifest)


def report_to_ray(answers_to: TrainRun | TuneTrial, result: dict[str, float], checkpoint_directory: str | None) -> None:
    """Ray Train (or Tune, train/results.py) copies this rank's part of the checkpoint into its storage; the local copy
    can go."""
    answers_to.report(result, checkpoint_directory)
    if checkpoint_directory:
        shutil.rmtree(checkpoint_directory, ignore_errors=True)
