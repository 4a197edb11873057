"""A worker's set-up, before its first step: the model and its DeepSpeed engine in the job's parallel layout, restored
from a checkpoint when there is one, and the reporter of its rank (train/reporting.py). Every rank runs all of it:
the collectives in it (DeepSpeed's, the node count, the parameter share) need them all."""

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psutil
import ray.train
import torch
import torch.distributed as dist

from orchestrator.config.job import JobConfig
from orchestrator.data.feed import step_batches
from orchestrator.data.tokenizers import from_json
from orchestrator.models.build import build_model
from orchestrator.models.tasks import TASKS, Task
from orchestrator.train import checkpoint
from orchestrator.train.clocks import Clock, timed, timed_calls
from orchestrator.train.deepspeed_config import accumulation_steps
from orchestrator.train.engine import build_engine, partitioned_construction, restart_schedule
from orchestrator.train.flops import device_peak_flops, model_flops_per_token, parameter_count
from orchestrator.train.memory import current_bytes
from orchestrator.train.parallel import DataParallel, Inputs
from orchestrator.train.parallel import layout as parallel_layout
from orchestrator.train.reporting import SilentReporter, open_reporter
from orchestrator.train.timeline import Timeline


@dataclass
class TrainPlan:
    """What the driver worked out before starting the workers."""

    total_steps: int
    tokenizer_json: str
    has_validation: bool
    tracking_uri: str
    run_id: str
    timeline: Timeline  # the driver's start-up marks; rank 0 adds its own up to the first step
    label_names: list[str]  # classification: label of each class index
    example_texts: list[str]  # the input example of the logged model
    registered_model: str | None  # Model Registry name of the final model (none for sweep trials)
    progress_board: Any = None  # train/progress.py's actor, when the driver draws a bar in a terminal
    initial_checkpoint: str | None = None  # start from this checkpoint (a sweep trial resumed or exploited by PBT)


@dataclass
class Worker:
    """What one worker trains with."""

    job: JobConfig
    plan: TrainPlan
    rank: int
    world_size: int
    task: Task
    tokenizer: Any
    layout: DataParallel
    engine: Any  # deepspeed.DeepSpeedEngine
    progress: checkpoint.Progress  # where training stands: restored, then advanced by the loop
    resumed: bool  # restored from a checkpoint
    data_rank: int  # this worker's share of each global batch (workers of a tensor or pipeline group share one)
    data_size: int
    nodes: int  # Ray nodes the workers run on
    flops_per_token: int
    peak_flops: float | None  # of this worker's device; None where unknown (CPUs)
    parameter_share: float  # the most of the model's parameters one worker holds
    memory_at_start: int  # bytes the process held before the model: libraries, runtime
    clocks: dict[str, Clock]  # where step time goes besides computing: waiting for data, reducing gradients
    model_construction: Any = None  # held while the model lives (engine.partitioned_construction)

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def tokens_per_step(self) -> int:
        return self.job.global_batch_size * self.job.data.seq_len

    @property
    def accumulation(self) -> int:
        """Micro batches per step on each worker: more when an elastic job runs on fewer workers."""
        return accumulation_steps(self.job, self.world_size)

    @functools.cached_property
    def train_data(self):
        """This worker's Ray Data shard of the training split (taken at first use: after the set-up's marks)."""
        return ray.train.get_dataset_shard("train")

    @functools.cached_property
    def val_data(self):
        return ray.train.get_dataset_shard("val") if self.plan.has_validation else None

    def batches(self) -> Iterator[list[Inputs]]:
        """This worker's micro batches (the model's inputs) of each step from where training stands to the last."""
        return itertools.islice(self._epochs(), max(self.total_steps - self.progress.step, 0))

    def _epochs(self) -> Iterator[list[Inputs]]:
        """Epoch after epoch, from the data position of the progress; the time spent waiting for each batch goes to
        the data-wait clock."""
        job, progress = self.job, self.progress
        first_step = progress.step
        while True:
            epoch = step_batches(
                self.train_data,
                rank=self.data_rank,
                world_size=self.data_size,
                micro_batch_size=job.train.micro_batch_size,
                global_batch_size=job.global_batch_size,
                shuffle_seed=job.data.seed + progress.epoch,
                skip=progress.steps_in_epoch,
            )
            for micro_batches in timed(epoch, self.clocks["data_wait"]):
                if progress.step == first_step:
                    self.plan.timeline.mark("first_batch")
                yield [self.task.model_inputs(batch) for batch in micro_batches]
            progress.next_epoch()


def setup(job: JobConfig, plan: TrainPlan) -> tuple[Worker, SilentReporter]:
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    timeline = plan.timeline
    timeline.mark("worker_processes", at=psutil.Process().create_time())  # Ray Train started this process
    timeline.mark("worker_setup")  # imports, torch.distributed, dataset shards
    memory_at_start = current_bytes(job.scaling.use_gpu)
    tokenizer = from_json(plan.tokenizer_json)
    model_construction = partitioned_construction(job, world_size)
    model = build_model(job.model, job.task, tokenizer, plan.label_names, job.train.seed)
    model_parameters = sum(parameter_count(parameter) for parameter in model.parameters())
    flops_per_token = model_flops_per_token(model, job.data.seq_len)
    layout = parallel_layout(job)
    timeline.mark("model_init")
    engine = build_engine(job, layout.wrap(model), plan.total_steps, world_size)
    data_rank, data_size = layout.data_rank(engine)
    timeline.mark("deepspeed_init")

    restored = restore(engine, job, plan, rank)
    progress, unsent_metrics = restored or (checkpoint.Progress(), {})
    clocks = {"data_wait": Clock(), "allreduce": Clock()}
    engine.allreduce_gradients = timed_calls(engine.allreduce_gradients, clocks["allreduce"])
    worker = Worker(
        job=job,
        plan=plan,
        rank=rank,
        world_size=world_size,
        task=TASKS[job.task],
        tokenizer=tokenizer,
        layout=layout,
        engine=engine,
        progress=progress,
        resumed=restored is not None,
        data_rank=data_rank,
        data_size=data_size,
        nodes=node_count(world_size),
        flops_per_token=flops_per_token,
        peak_flops=device_peak_flops(job.scaling.use_gpu, job.deepspeed.precision),
        parameter_share=largest_parameter_share(engine, model_parameters),
        memory_at_start=memory_at_start,
        clocks=clocks,
        model_construction=model_construction,
    )
    reporter = open_reporter(worker, unsent_metrics)
    timeline.mark("checkpoint_restore")
    engine.train()  # from_pretrained returns a model in eval mode: without this, dropout would stay off
    return worker, reporter


def restore(engine, job: JobConfig, plan: TrainPlan, rank: int) -> tuple[checkpoint.Progress, dict] | None:
    """Where the checkpoint to continue from left training, and the metrics it had not delivered; None on a fresh
    start. Ray Train's own checkpoint (this run restarted after a failure) comes before the one the run started from."""
    source = ray.train.get_checkpoint()
    if source is None and plan.initial_checkpoint:
        source = ray.train.Checkpoint(plan.initial_checkpoint)
    restored = checkpoint.restore(engine, source, rank)
    if restored is None:
        torch.manual_seed(job.train.seed + rank)  # dropout differs per rank; init was identical
    else:
        restart_schedule(engine, job, plan.total_steps, restored[0].step)
    return restored


def node_count(world_size: int) -> int:
    """How many Ray nodes the workers run on (every rank takes part)."""
    node_ids = [None] * world_size
    dist.all_gather_object(node_ids, ray.get_runtime_context().get_node_id())
    return len(set(node_ids))


def largest_parameter_share(engine, model_parameters: int) -> float:
    """The most of the model's parameters one worker holds (every rank takes part): 1 unless tensor or pipeline
    parallelism split the model (ZeRO-3's shards are not counted: it gathers whole layers to compute)."""
    share = torch.tensor([sum(parameter_count(parameter) for parameter in engine.module.parameters()) / model_parameters])
    dist.all_reduce(share, op=dist.ReduceOp.MAX)
    return share.item()
