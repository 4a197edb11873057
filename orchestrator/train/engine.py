"""The DeepSpeed engine of one worker: model + optimizer + LR schedule + ZeRO, from the job."""

import functools
import os
import warnings

import deepspeed
import torch
from transformers.integrations import HfDeepSpeedConfig

from orchestrator.config.job import JobConfig
from orchestrator.train.deepspeed_config import deepspeed_config
from orchestrator.train.parallel import DataParallel, join_process_group
from orchestrator.train.schedules import build_schedule

ADAPTER_DIR = "adapter"  # in the exported model's directory


def partitioned_construction(job: JobConfig, world_size: int) -> HfDeepSpeedConfig | None:
    """Under ZeRO-3, tells transformers the DeepSpeed config: models are then built inside deepspeed.zero.Init, in
    shards from the start, so no worker ever holds the whole model (it would set every worker's memory peak).
    transformers keeps only a weak reference: the caller holds the returned object for as long as the model lives."""
    if job.deepspeed.zero_stage != 3:
        return None
    join_process_group()  # so zero.Init sees every worker
    return HfDeepSpeedConfig(deepspeed_config(job, world_size))


def build_engine(job: JobConfig, model: torch.nn.Module, total_steps: int, world_size: int) -> deepspeed.DeepSpeedEngine:
    """Ray Train has already set up torch.distributed (gloo or nccl); DeepSpeed joins that process group."""
    join_process_group()
    engine, *_ = deepspeed.initialize(
        model=model,
        model_parameters=[parameter for parameter in model.parameters() if parameter.requires_grad],  # not LoRA's frozen weights
        config=deepspeed_config(job, world_size),
        lr_scheduler=functools.partial(build_schedule, cfg=job.train.schedule, total_steps=total_steps),
    )
    if world_size == 1 and job.deepspeed.zero_stage == 0:
        # Alone there is nothing to reduce, but DeepSpeed would still copy every gradient through a flat buffer at
        # each step: 1.2% of the step time (benchmarks/overhead.py), and skipping it changes no bit of the training.
        engine.enable_backward_allreduce = False
    return engine


def restart_schedule(engine: deepspeed.DeepSpeedEngine, job: JobConfig, total_steps: int, step: int) -> None:
    """After loading a checkpoint: the job's peak learning rate and schedule, advanced to `step`.

    The optimizer state just loaded carries the learning rate of the run that saved it; that is ignored on purpose,
    because the job resuming it may ask for another one (PBT mutates it when a trial exploits a better one).
    """
    optimizer = engine.basic_optimizer  # the optimizer DeepSpeed built the schedule on
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = job.train.optimizer.lr
    schedule = build_schedule(optimizer, job.train.schedule, total_steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about scheduler steps without optimizer steps: intended here
        for _ in range(step):
            schedule.step()
    engine.lr_scheduler = schedule


def export_hf_model(engine: deepspeed.DeepSpeedEngine, layout: DataParallel, directory: str, dtype: torch.dtype, is_writer: bool) -> None:
    """Saves the whole model in Hugging Face format, however its weights are split: every rank takes part in
    gathering them (ZeRO-3 shards, tensor-parallel slices, pipeline stages), the writer saves them. A LoRA model is
    saved merged (it loads with from_pretrained), and its adapter alone in ADAPTER_DIR (loads with peft)."""
    state = layout.full_state_dict(engine, is_writer)
    if not is_writer:
        return
    model = layout.hf_model(engine)
    if hasattr(model, "peft_config"):  # a LoRA model, the adapter alone beside the merged one
        from orchestrator.models.lora import merged_state_dict  # peft: 2 s to import, only for the jobs that use it

        model.save_pretrained(os.path.join(directory, ADAPTER_DIR), state_dict=state)
        model, state = model.get_base_model(), merged_state_dict(model, state)
    model.save_pretrained(directory, state_dict={name: tensor.to(dtype) for name, tensor in state.items()})
