"""Evaluation on the validation split, and when it is time for it: before training (`train.eval_at_start`, on a run
that starts fresh), every `train.eval_every` steps and at the last step. Every rank takes part, at the same steps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from orchestrator.data.feed import step_batches

if TYPE_CHECKING:
    from orchestrator.train.reporting import SilentReporter
    from orchestrator.train.setup import Worker


class Evaluator:
    def __init__(self, worker: Worker, reporter: SilentReporter):
        self.worker, self.reporter = worker, reporter

    def due_at_start(self) -> bool:
        train = self.worker.job.train
        return self.worker.val_data is not None and train.eval_at_start and self.worker.progress.step == 0

    def due(self, step: int) -> bool:
        """An evaluation step (whether or not the job holds data out: the results of these steps go to Ray)."""
        every = self.worker.job.train.eval_every
        return step == self.worker.total_steps or bool(every and step % every == 0)

    def run(self, step: int) -> dict[str, float]:
        """The task's metrics after `step` steps, reported; none when the job holds no data out."""
        if self.worker.val_data is None:
            return {}
        metrics, predictions = evaluate(self.worker)
        self.reporter.evaluated(step, metrics, predictions)
        return metrics


def evaluate(worker: Worker) -> tuple[dict[str, float], dict[str, list]]:
    """The task's metrics over the validation split (capped by eval_batches), and the predictions of every rank."""
    job, engine, task = worker.job, worker.engine, worker.task
    engine.eval()
    loss_sum, batches = torch.zeros(1), torch.zeros(1)
    predictions: dict[str, list] = {}
    micro = job.train.micro_batch_size
    with torch.no_grad():
        for index, (batch,) in enumerate(
            step_batches(
                worker.val_data, rank=worker.data_rank, world_size=worker.data_size, micro_batch_size=micro, global_batch_size=micro * worker.data_size
            )
        ):
            if job.train.eval_batches and index >= job.train.eval_batches:
                break
            loss, outputs = worker.layout.eval_batch(engine, task.model_inputs(batch))
            loss_sum += loss.float()
            batches += 1
            for key, values in task.predictions(engine.module, batch, outputs, worker.tokenizer, job.deepspeed.zero_stage == 3).items():
                predictions.setdefault(key, []).extend(values)
    engine.train()
    dist.all_reduce(loss_sum)
    dist.all_reduce(batches)
    gathered: list[dict] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, predictions)
    predictions = {key: [value for part in gathered for value in part[key]] for key in predictions}
    return task.metrics((loss_sum / batches).item(), predictions, worker.plan.label_names), predictions
