"""What a worker trains with, and where its training stands: the driver's plan, the progress a checkpoint keeps, and
the worker's model, engine, layout and data, which train/setup.py builds and the loop's components share."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.config.job import JobConfig
from orchestrator.data.feed import step_batches
from orchestrator.data.shards import Split
from orchestrator.train.clocks import Clock, timed
from orchestrator.train.deepspeed_config import accumulation_steps
from orchestrator.train.results import TrainRun, TuneTrial
from orchestrator.train.timeline import Timeline

if TYPE_CHECKING:  # the driver builds a TrainPlan without the workers' libraries (DeepSpeed, transformers)
    from orchestrator.models.tasks import Task
    from orchestrator.train.parallel import DataParallel, Inputs


@dataclass
class TrainPlan:
    """What the driver worked out before starting the workers."""

    total_steps: int
    tokenizer_json: str
    train_split: str  # directories of the prepared splits (data/shards.py)
    val_split: str | None  # None: the job holds no data out
    tracking_uri: str
    run_id: str
    timeline: Timeline  # the driver's start-up marks; rank 0 adds its own up to the first step
    label_names: list[str]  # classification: label of each class index
    example_texts: list[str]  # the input example of the logged model
    registered_model: str | None  # Model Registry name of the final model (none for sweep trials)
    progress_board: Any = None  # train/progress.py's actor, when the driver draws a bar in a terminal
    initial_checkpoint: str | None = None  # start from this checkpoint (a sweep trial resumed or exploited by PBT)
    # A one-worker sweep trial that trains in its own process reports to Tune itself, results with this metric only
    tune_metric: str | None = None
    chat_template: str | None = None  # sft: how prompts are rendered; the exported tokenizer keeps it


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    steps_in_epoch: int = 0  # global batches (optimizer steps) of `epoch` already taken
    tokens: int = 0  # training tokens seen by all workers

    def advance(self, tokens: int) -> int:
        """One more optimizer step, of `tokens` tokens; returns its number."""
        self.step += 1
        self.steps_in_epoch += 1
        self.tokens += tokens
        return self.step

    def next_epoch(self) -> None:
        self.epoch += 1
        self.steps_in_epoch = 0


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
    progress: Progress  # where training stands: restored, then advanced by the loop
    resumed: bool  # restored from a checkpoint
    data_rank: int  # this worker's share of each global batch (workers of a tensor or pipeline group share one)
    data_size: int
    nodes: int  # Ray nodes the workers run on
    flops_per_token: int
    peak_flops: float | None  # of this worker's device; None where unknown (CPUs)
    parameter_share: float  # the most of the model's parameters one worker holds
    trainable_share: float  # of the model's parameters, those the optimizer updates (LoRA: the adapters and a new head)
    memory_at_start: int  # bytes the process held before the model: libraries, runtime
    clocks: dict[str, Clock]  # where step time goes besides computing: waiting for data, reducing gradients
    answers_to: TrainRun | TuneTrial  # where its results go (train/results.py)
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
    def train_data(self) -> Split:
        return Split(self.plan.train_split)

    @functools.cached_property
    def val_data(self) -> Split | None:
        return Split(self.plan.val_split) if self.plan.val_split else None

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
                seed=job.data.seed,
                epoch=progress.epoch,
                skip=progress.steps_in_epoch,
            )
            for micro_batches in timed(epoch, self.clocks["data_wait"]):
                if progress.step == first_step:
                    self.plan.timeline.mark("first_batch")
                yield [self.task.model_inputs(batch) for batch in micro_batches]
            progress.next_epoch()
