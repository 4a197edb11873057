"""The DeepSpeed config, derived from the job in this one place (pure: no torch, no deepspeed import)."""

import copy

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
    """For `world_size` workers (default: scaling.num_workers)."""
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
    return deep_merge(config, ds.extra)


def deep_merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
