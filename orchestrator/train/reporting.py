"""What a worker reports, and when it is time to: the training loss every `train.log_every` steps (and at the last),
throughput, memory, the start-up timeline, evaluations and the final model, into MLflow, the job log and the
terminal's progress bar.

Rank 0 gets a `Reporter`; every other rank a `SilentReporter` with the same interface (torchtitan's no-op logger),
which says nothing but takes part in what every rank must do at the same steps: averaging the loss over ranks.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from mlflow.tracking import MlflowClient

from orchestrator.tracking.metrics import MetricsLogger, deliver, last_logged_steps
from orchestrator.train.clocks import Window
from orchestrator.train.export import log_model, log_training_curves
from orchestrator.train.flops import mfu
from orchestrator.train.memory import model_state_bytes, peak_bytes
from orchestrator.train.progress import ProgressSender
from orchestrator.train.timeline import format_phases

if TYPE_CHECKING:
    from orchestrator.train.worker import Worker

GENERATED_SAMPLES = 100  # generated texts (or answers) kept as an artifact of the last evaluation

log = logging.getLogger(__name__)


def open_reporter(worker: Worker, unsent_metrics: dict) -> SilentReporter:
    """Rank 0's reporter, or the silent stand-in. `unsent_metrics`: what the restored checkpoint had not delivered."""
    return Reporter(worker, unsent_metrics) if worker.rank == 0 else SilentReporter(worker)


class SilentReporter:
    """The reporter of every rank but 0: says nothing, and averages the loss over ranks with them at each log step."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.first_step = worker.progress.step + 1  # of this run (a resumed one starts after its checkpoint)
        self.train_loss: float | None = None  # averaged over ranks at the last log step
        self.window = Window(worker.clocks)  # the steps since the last log step: their time and where it went

    def due(self, step: int) -> bool:
        """Is it time to log the training loss?"""
        return step % self.worker.job.train.log_every == 0 or step == self.worker.total_steps

    def step(self, step: int, loss: torch.Tensor) -> None:
        """After each optimizer step, with the sum of this worker's micro-batch losses."""
        self.window.steps += 1
        if step == self.first_step:
            self.worker.plan.timeline.mark("first_step")
            self.started(step)
        if self.due(step):
            self.train_loss = mean_over_ranks(loss / self.worker.accumulation)
            self.logged(step)
            self.window.restart()
        else:
            self.stepped(step)

    def result(self, step: int) -> dict[str, float]:
        """What goes to Ray Train (and through it to Tune) at an evaluation or checkpoint step, before evaluating."""
        result = {"step": step, "train/lr": self.worker.engine.get_lr()[0]}
        if self.train_loss is not None:
            result["train/loss"] = self.train_loss
        return result

    def restart_window(self) -> None:
        """Keeps evaluation and checkpoint time out of the throughput."""
        self.window.restart()

    # What rank 0 says; nothing on the other ranks.

    def at_fullest(self) -> Callable[[], None] | None:
        """What to run in this step when the model states are at their fullest (layout.train_step's `at_fullest`)."""
        return None

    def started(self, step: int) -> None:
        """The run's first step is done."""

    def logged(self, step: int) -> None:
        """A log step is done; `train_loss` holds its loss."""

    def stepped(self, step: int) -> None:
        """A step between log steps is done."""

    def evaluated(self, step: int, metrics: dict[str, float], predictions: dict[str, list]) -> None:
        """An evaluation after `step` steps (0: before training)."""

    def flush(self) -> None:
        """Delivers what is buffered: what Ray (or a Tune scheduler) sees is then also in MLflow."""

    def unsent(self) -> dict | None:
        """What a checkpoint carries for whoever resumes the run: the metrics not delivered yet."""
        return None

    def exported(self, hf_dir: str) -> None:
        """The final model is written in Hugging Face format in `hf_dir` (by rank 0)."""


class Reporter(SilentReporter):
    """Rank 0's: metrics into the run in MLflow (buffered, never holding a step: tracking/metrics.py), a line in the
    job log at each log step and evaluation, the terminal's progress bar, and the final model."""

    def __init__(self, worker: Worker, unsent_metrics: dict):
        super().__init__(worker)
        if worker.resumed:
            log.info(
                f"resumed from step {worker.progress.step} (epoch {worker.progress.epoch}) at lr "
                f"{worker.engine.get_lr()[0]:.3e} with {worker.world_size} workers"
            )
        log.info(f"{worker.world_size} workers on {worker.nodes} node(s){format_layout(worker)}")
        if worker.trainable_share < 1:
            log.info(f"LoRA: {worker.trainable_share:.2%} of the model's parameters train")
        self.metrics = open_metrics(worker, unsent_metrics)
        self.bar = ProgressSender(worker.plan.progress_board) if worker.plan.progress_board else None

    def at_fullest(self) -> Callable[[], None] | None:
        # In the run's second step: the first one made the optimizer states.
        return self.log_memory if self.worker.progress.step == self.first_step else None

    def log_memory(self) -> None:
        worker = self.worker
        self.metrics.log(
            worker.progress.step,
            {
                "memory/at_start_bytes": worker.memory_at_start,
                "memory/model_state_bytes": model_state_bytes(worker.engine.module, worker.engine.optimizer),
                "memory/parameter_share": worker.parameter_share,
            },
        )

    def started(self, step: int) -> None:
        timeline = self.worker.plan.timeline
        phases = timeline.phases()
        logged = {f"time/startup/{phase}_s": seconds for phase, seconds in phases.items()}
        firsts = {
            "time/first_step_s": timeline.total(),
            "perf/model_flops_per_token": self.worker.flops_per_token,
            "model/trainable_share": self.worker.trainable_share,
        }
        self.metrics.log(step, logged | firsts)
        log.info(f"first optimizer step {timeline.total():.1f} s after the job started: {format_phases(phases)}")

    def logged(self, step: int) -> None:
        worker, window = self.worker, self.window
        elapsed = window.seconds()
        tokens_per_s = window.steps * worker.tokens_per_step / elapsed
        logged = {"train/loss": self.train_loss, "train/lr": worker.engine.get_lr()[0], "train/tokens_per_s": tokens_per_s}
        logged["train/epoch"] = worker.progress.epoch
        logged["perf/flops_per_s"] = tokens_per_s * worker.flops_per_token
        if worker.peak_flops:
            logged["perf/mfu"] = mfu(tokens_per_s, worker.flops_per_token, worker.world_size, worker.peak_flops)
        logged |= {f"train/{name}_fraction": share for name, share in window.fractions(elapsed).items()}
        logged["memory/peak_bytes"] = peak_bytes(worker.job.scaling.use_gpu)
        grad_norm = worker.engine.get_global_grad_norm()
        if grad_norm is not None:
            logged["train/grad_norm"] = float(grad_norm)
        self.metrics.log(step, logged)
        eta_s = (worker.total_steps - step) * elapsed / window.steps
        log.info(format_progress(step, worker.total_steps, self.train_loss, logged["train/lr"], tokens_per_s, eta_s))
        if self.bar:
            self.bar.step(step, {"loss": self.train_loss, "lr": logged["train/lr"], "tokens_per_s": tokens_per_s})

    def stepped(self, step: int) -> None:
        if self.bar:
            self.bar.step(step)

    def evaluated(self, step: int, metrics: dict[str, float], predictions: dict[str, list]) -> None:
        self.metrics.log(step, metrics)
        log.info(f"step {step}{' (untrained)' if step == 0 else ''} | eval {format_metrics(metrics)}")
        if step == self.worker.total_steps:
            log_predictions(self.metrics, predictions, self.worker.plan.label_names)

    def flush(self) -> None:
        self.metrics.flush()

    def unsent(self) -> dict | None:
        return {"run_id": self.worker.plan.run_id, "metrics": self.metrics.unsent()}

    def exported(self, hf_dir: str) -> None:
        if version := log_model(self.metrics, self.worker, hf_dir):
            log.info(f"registered the model as models:/{version.name}/{version.version}")
        log_training_curves(self.metrics)
        self.metrics.close()


def open_metrics(worker: Worker, unsent: dict) -> MetricsLogger:
    """Rank 0's metrics logger. A resumed run skips what MLflow already has of the steps it replays, and delivers
    what its checkpoint had not (unless the checkpoint came from another run, e.g. a trial PBT exploited)."""
    plan = worker.plan
    already_logged: dict[str, int] = {}
    if worker.resumed:
        client = MlflowClient(plan.tracking_uri)
        deliver(lambda: already_logged.update(last_logged_steps(client, plan.run_id)), "the resumed run's history")
    return MetricsLogger(
        plan.tracking_uri,
        plan.run_id,
        worker.job.tracking.system_metrics_every_s,
        already_logged=already_logged,
        unsent=unsent.get("metrics", []) if unsent.get("run_id") == plan.run_id else [],
    )


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def format_progress(step: int, total: int, loss: float, lr: float, tokens_per_s: float, eta_s: float) -> str:
    eta = time.strftime("%H:%M:%S", time.gmtime(max(eta_s, 0)))
    return f"step {step}/{total} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s | eta {eta}"


def format_metrics(metrics: dict[str, float]) -> str:
    return " | ".join(f"{name.split('/')[-1]} {value:.4g}" for name, value in metrics.items())


def format_layout(worker: Worker) -> str:
    if worker.job.parallelism.layout == "data":
        return ""
    split = worker.job.parallelism
    return (
        f": data x tensor x pipeline = {worker.data_size} x {split.tensor} x {split.pipeline}, "
        f"each worker holding at most {worker.parameter_share:.0%} of the model's parameters"
    )


def log_predictions(metrics: MetricsLogger, predictions: dict[str, list], label_names: list[str]) -> None:
    """What the last evaluation predicted, for a person to look at: the confusion matrix of a classifier, or
    generated texts beside their references, or answers beside the true ones and the baseline's."""
    if label_names:
        from orchestrator.tracking.plots import confusion_matrix_plot  # see export.py

        directory = tempfile.mkdtemp(prefix="orchestrator-plots-")
        confusion_matrix_plot(predictions["label"], predictions["predicted"], label_names, directory)
        deliver(lambda: metrics.client.log_artifacts(metrics.run_id, directory, "plots"), "the confusion matrix")
        shutil.rmtree(directory, ignore_errors=True)
    if "hypothesis" in predictions:
        rows = zip(predictions["reference"][:GENERATED_SAMPLES], predictions["hypothesis"][:GENERATED_SAMPLES])
        table = "reference\tgenerated\n" + "".join(f"{ref}\t{hyp}\n" for ref, hyp in rows)
        deliver(lambda: metrics.client.log_text(metrics.run_id, table, "eval/generated.tsv"), "the generated texts")
    if "predicted_answer" in predictions:
        columns = ("question", "answer", "predicted_answer", "baseline_answer")
        rows = zip(*(predictions[column][:GENERATED_SAMPLES] for column in columns))
        table = "\t".join(columns) + "\n" + "".join("\t".join(row) + "\n" for row in rows)
        deliver(lambda: metrics.client.log_text(metrics.run_id, table, "eval/answers.tsv"), "the answers")
