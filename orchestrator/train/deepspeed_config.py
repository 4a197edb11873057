"""The DeepSpeed config, derived from the job in this one place (pure: no torch, no deepspeed import)."""

import copy
from typing import Any

from orchestrator.config.job import JobConfig
from orchestrator.train.optimizers import optimizer_section


def accumulation_steps(job: JobConfig, world_size: int) -> int:
    """Micro batches per optimizer step on each of `world_size` workers, keeping the global batch size."""
    return job.train.grad_accum_steps * job.scaling.num_workers // world_size


MIN_BUCKET_ELEMENTS = 2**20


def bucket_sizes(stage: int, hidden: int | None) -> dict:
    """ZeRO's communication buckets sized from the model's width, as Hugging Face's "auto" values do. DeepSpeed's
    defaults (5e8 elements) are made for billion-parameter models and can allocate gigabytes whatever the model
    (benchmarks/zero_memory.py: ZeRO-3's peak went from 4.09 to 3.84 GiB with these; ZeRO-1 and 2 did not move)."""
    if stage == 0 or hidden is None:
        return {}
    bucket = max(hidden * hidden, MIN_BUCKET_ELEMENTS)
    if stage == 3:
        return {"reduce_bucket_size": bucket, "stage3_prefetch_bucket_size": int(0.9 * bucket), "stage3_param_persistence_threshold": 10 * hidden}
    return {"reduce_bucket_size": bucket, "allgather_bucket_size": bucket}


def deepspeed_config(job: JobConfig, world_size: int | None = None) -> dict:
    """For `world_size` workers (default: scaling.num_workers): the derived config with deepspeed.extra merged over it
    (validation made sure extra adds keys without contradicting those the job sets, JOB_KEYS)."""
    return deep_merge(derived_config(job, world_size), job.deepspeed.extra)


def derived_config(job: JobConfig, world_size: int | None = None) -> dict:
    ds = job.deepspeed
    zero: dict = {"stage": ds.zero_stage, **bucket_sizes(ds.zero_stage, job.model.dim("hidden"))}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_batch_size": job.global_batch_size,
        "train_micro_batch_size_per_gpu": job.train.micro_batch_size,
        "gradient_accumulation_steps": accumulation_steps(job, world_size or job.scaling.num_workers),
        "gradient_clipping": job.train.grad_clip,
        "optimizer": optimizer_section(job.train.optimizer),
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "fp16": {"enabled": ds.precision == "fp16"},
        # The framework logs progress itself; DeepSpeed's own per-step prints would duplicate it.
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if job.parallelism.tensor > 1:
        config["tensor_parallel"] = {"autotp_size": job.parallelism.tensor}
        # DeepSpeed checks train_batch_size against micro x accumulation x all workers, tensor-parallel ones included
        # although they share a batch; left out, it is derived from the other two.
        del config["train_batch_size"]
    if ds.offload_optimizer:
        # torch's Adam on offloaded states instead of DeepSpeedCPUAdam, which needs a C++ build.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


# DeepSpeed keys that the job's own fields set: deepspeed.extra may repeat their value, not change it.
JOB_KEYS = {
    ("zero_optimization", "stage"): ("deepspeed.zero_stage", lambda job: job.deepspeed.zero_stage),
    ("train_batch_size",): ("train.micro_batch_size x grad_accum_steps x data-parallel size", lambda job: job.global_batch_size),
    ("train_micro_batch_size_per_gpu",): ("train.micro_batch_size", lambda job: job.train.micro_batch_size),
    ("gradient_accumulation_steps",): ("train.grad_accum_steps", lambda job: job.train.grad_accum_steps),
    ("gradient_clipping",): ("train.grad_clip", lambda job: job.train.grad_clip),
    ("bf16", "enabled"): ("deepspeed.precision", lambda job: job.deepspeed.precision),
    ("fp16", "enabled"): ("deepspeed.precision", lambda job: job.deepspeed.precision),
    ("optimizer", "type"): ("train.optimizer.name", lambda job: job.train.optimizer.name),
    ("optimizer", "params", "lr"): ("train.optimizer.lr", lambda job: job.train.optimizer.lr),
    ("tensor_parallel", "autotp_size"): ("parallelism.tensor", lambda job: job.parallelism.tensor),
}
_ABSENT = object()


def extra_conflict(job: JobConfig) -> str | None:
    """The first key of deepspeed.extra that would change what one of the job's fields set (JOB_KEYS), as an error
    naming both keys; None if extra only adds to the derived config or repeats it."""
    derived = derived_config(job)
    merged = deep_merge(derived, job.deepspeed.extra)
    for path, (job_key, job_value) in JOB_KEYS.items():
        if _lookup(merged, path) != _lookup(derived, path):
            given = _given_part(job.deepspeed.extra, path)
            value = _lookup(job.deepspeed.extra, given)
            return f"deepspeed.extra.{'.'.join(given)}: {value!r} conflicts with {job_key} ({job_value(job)!r})"
    return None


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return _ABSENT
        tree = tree[key]
    return tree


def _given_part(extra: dict, path: tuple[str, ...]) -> tuple[str, ...]:
    """The part of `path` that extra spells out: all of it, or down to the section it replaces with a plain value."""
    node: Any = extra
    for length, key in enumerate(path, 1):
        node = node[key]
        if not isinstance(node, dict):
            return path[:length]
    return path


def deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
