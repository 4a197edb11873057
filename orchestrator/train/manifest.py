"""What a checkpoint was written by: the model, task and parallel layout, saved beside every checkpoint so that a
job resuming a run can be refused, before anything starts, when the run's checkpoint is of another model.

Light on purpose (no torch, no Ray): the CLI checks a resubmitted job with it as part of validation.
"""

import json

import pyarrow.fs

from orchestrator.config.errors import UserError
from orchestrator.config.job import JobConfig
from orchestrator.tracking.params import flatten

MANIFEST = "orchestrator_checkpoint.json"
CHECKPOINT_PREFIX = "checkpoint_"  # Ray Train names each checkpoint directory checkpoint_<date>, in time order


def describe(job: JobConfig) -> dict[str, object]:
    """What a checkpoint can only be loaded into: the same task and model (dropout aside), sharded the same way."""
    return {
        "task": job.task,
        "model": job.model.model_dump(mode="json", exclude={"dropout"}),
        "deepspeed.zero_stage": job.deepspeed.zero_stage,
        "scaling.num_workers": job.scaling.num_workers,
        "parallelism": {"data": job.data_parallel_size, "tensor": job.parallelism.tensor, "pipeline": job.parallelism.pipeline},
    }


def manifest_text(job: JobConfig, step: int) -> str:
    return json.dumps({"step": step, **describe(job)}, indent=2)


def differences(written_by: dict, job: JobConfig) -> list[str]:
    """'key: checkpoint value, job value' for each setting that differs."""
    theirs, ours = flatten({k: v for k, v in written_by.items() if k != "step"}), flatten(describe(job))
    keys = sorted(key for key in theirs.keys() | ours.keys() if theirs.get(key) != ours.get(key))
    return [f"{key} {theirs.get(key)} in the checkpoint, {ours.get(key)} in the job" for key in keys]


def latest_manifest(run_dir: str) -> tuple[str, dict] | None:
    """The newest checkpoint of a run that has a manifest, and the manifest; None if the run has none."""
    fs, path = pyarrow.fs.FileSystem.from_uri(run_dir)
    entries = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    checkpoints = sorted(
        (entry.path for entry in entries if entry.type == pyarrow.fs.FileType.Directory and entry.base_name.startswith(CHECKPOINT_PREFIX)),
        reverse=True,
    )
    for checkpoint in checkpoints:
        manifest = f"{checkpoint}/{MANIFEST}"
        if fs.get_file_info(manifest).type == pyarrow.fs.FileType.File:
            with fs.open_input_stream(manifest) as stream:
                try:
                    return checkpoint, json.loads(stream.read())
                except ValueError:
                    raise UserError(f"checkpoint: {manifest} is corrupt (not JSON); use --restart to start over") from None
    return None


def check_resumable(job: JobConfig, run_dir: str) -> None:
    """A job whose run already has checkpoints resumes from them: they must be of this job's model."""
    found = latest_manifest(run_dir)
    if found is None:
        return
    checkpoint, written_by = found
    changed = differences(written_by, job)
    if changed:
        raise UserError(
            f"checkpoint: run {job.tracking.run_name!r} has a checkpoint of another model or layout ({'; '.join(changed[:3])}) "
            f"in {checkpoint}; submit with --restart to start over, or choose another tracking.run_name"
        )
