"""What every Ray Train worker runs: build the model and its DeepSpeed engine, resume, then
step -> log -> evaluate -> checkpoint until `total_steps`, and finally export the model.

Only rank 0 talks to MLflow; every rank takes part in the collectives (loss averaging, evaluation,
checkpointing, the ZeRO-3 gather at export), always at the same steps.
"""

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import psutil
import ray.train
import torch
import torch.distributed as dist
from mlflow.tracking import MlflowClient

from orchestrator.config.job import JobConfig
from orchestrator.data.feed import step_batches
from orchestrator.data.tokenizers import from_json
from orchestrator.environment import worker_environment
from orchestrator.inference.predictor import MODEL_CARD
from orchestrator.models.build import TORCH_DTYPES, build_model
from orchestrator.models.tasks import TASKS, Task
from orchestrator.tracking.metrics import MetricsLogger, deliver, last_logged_steps
from orchestrator.train import checkpoint
from orchestrator.train.clocks import Clock, Window, timed, timed_calls
from orchestrator.train.deepspeed_config import accumulation_steps
from orchestrator.train.engine import build_engine, export_hf_model, partitioned_construction, restart_schedule
from orchestrator.train.flops import device_peak_flops, mfu, model_flops_per_token, parameter_count
from orchestrator.train.manifest import manifest_text
from orchestrator.train.parallel import DataParallel, layout as parallel_layout
from orchestrator.train.memory import current_bytes, model_state_bytes, peak_bytes
from orchestrator.train.progress import ProgressSender
from orchestrator.train.timeline import Timeline, format_phases

GENERATED_SAMPLES = 100  # generated texts kept as an artifact of the last evaluation

log = logging.getLogger(__name__)


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


def write_model_card(job: JobConfig, directory: str) -> None:
    card = {"task": job.task, "seq_len": job.data.seq_len, "text_field": job.data.text_field}
    card |= {"label_field": job.data.label_field, "target_field": job.data.target_field}
    with open(os.path.join(directory, MODEL_CARD), "w") as out:
        json.dump(card, out, indent=2)


def format_progress(step: int, total: int, loss: float, lr: float, tokens_per_s: float, eta_s: float) -> str:
    eta = time.strftime("%H:%M:%S", time.gmtime(max(eta_s, 0)))
    return f"step {step}/{total} | loss {loss:.4f} | lr {lr:.2e} | {tokens_per_s:,.0f} tok/s | eta {eta}"


def mean_over_ranks(value: torch.Tensor) -> float:
    value = value.detach().clone().float()
    dist.all_reduce(value)
    return value.item() / dist.get_world_size()


def evaluate(engine, layout: DataParallel, dataset, task: Task, job: JobConfig, plan: TrainPlan, tokenizer) -> tuple[dict, dict[str, list]]:
    """The task's metrics over the validation split (capped by eval_batches), and the predictions of every rank."""
    data_rank, data_size = layout.data_rank(engine)
    world_size = dist.get_world_size()
    engine.eval()
    loss_sum, batches = torch.zeros(1), torch.zeros(1)
    predictions: dict[str, list] = {}
    with torch.no_grad():
        micro = job.train.micro_batch_size
        for index, (batch,) in enumerate(
            step_batches(dataset, rank=data_rank, world_size=data_size, micro_batch_size=micro, global_batch_size=micro * data_size)
        ):
            if job.train.eval_batches and index >= job.train.eval_batches:
                break
            loss, outputs = layout.eval_batch(engine, task.model_inputs(batch))
            loss_sum += loss.float()
            batches += 1
            for key, values in task.predictions(engine.module, batch, outputs, tokenizer, job.deepspeed.zero_stage == 3).items():
                predictions.setdefault(key, []).extend(values)
    engine.train()
    dist.all_reduce(loss_sum)
    dist.all_reduce(batches)
    gathered: list[dict] = [{} for _ in range(world_size)]
    dist.all_gather_object(gathered, predictions)
    predictions = {key: [value for part in gathered for value in part[key]] for key in predictions}
    return task.metrics((loss_sum / batches).item(), predictions, plan.label_names), predictions


def open_metrics(job: JobConfig, plan: TrainPlan, resumed: bool, unsent: dict) -> MetricsLogger:
    """Rank 0's metrics logger. A resumed run skips what MLflow already has of the steps it replays, and delivers
    what its checkpoint had not (unless the checkpoint came from another run, e.g. a trial PBT exploited)."""
    already_logged: dict[str, int] = {}
    if resumed:
        client = MlflowClient(plan.tracking_uri)
        deliver(lambda: already_logged.update(last_logged_steps(client, plan.run_id)), "the resumed run's history")
    return MetricsLogger(
        plan.tracking_uri, plan.run_id, job.tracking.system_metrics_every_s, already_logged=already_logged,
        unsent=unsent.get("metrics", []) if unsent.get("run_id") == plan.run_id else [],
    )


def node_count(world_size: int) -> int:
    """How many Ray nodes the workers run on (every rank takes part)."""
    node_ids = [None] * world_size
    dist.all_gather_object(node_ids, ray.get_runtime_context().get_node_id())
    return len(set(node_ids))


def format_metrics(metrics: dict[str, float]) -> str:
    return " | ".join(f"{name.split('/')[-1]} {value:.4g}" for name, value in metrics.items())


def train_loop(config: dict) -> None:
    worker_environment()
    job: JobConfig = config["job"]
    plan: TrainPlan = config["plan"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    task = TASKS[job.task]
    accum = accumulation_steps(job, world_size)  # more when an elastic job runs on fewer workers
    tokens_per_step = job.global_batch_size * job.data.seq_len

    timeline = plan.timeline
    timeline.mark("worker_processes", at=psutil.Process().create_time())  # Ray Train started this process
    timeline.mark("worker_setup")  # imports, torch.distributed, dataset shards
    memory_at_start = current_bytes(job.scaling.use_gpu)  # the process before the model: libraries, runtime
    tokenizer = from_json(plan.tokenizer_json)
    zero3_construction = partitioned_construction(job, world_size)  # noqa: F841 (held while the model lives)
    model = build_model(job.model, job.task, tokenizer, plan.label_names, job.train.seed)
    flops_per_token = model_flops_per_token(model, job.data.seq_len)
    model_parameters = sum(parameter_count(parameter) for parameter in model.parameters())
    peak_flops = device_peak_flops(job.scaling.use_gpu, job.deepspeed.precision)
    layout = parallel_layout(job)
    timeline.mark("model_init")
    engine = build_engine(job, layout.wrap(model), plan.total_steps, world_size)
    data_rank, data_size = layout.data_rank(engine)  # the workers of a tensor- or pipeline-parallel group share batches
    timeline.mark("deepspeed_init")
    # Ray Train's own checkpoint (this run restarted after a failure) comes before the one the run started from.
    source = ray.train.get_checkpoint()
    if source is None and plan.initial_checkpoint:
        source = ray.train.Checkpoint(plan.initial_checkpoint)
    restored = checkpoint.restore(engine, source, rank)
    if restored is None:
        progress, unsent_metrics = checkpoint.Progress(), {}
        torch.manual_seed(job.train.seed + rank)  # dropout differs per rank; init was identical
    else:
        progress, unsent_metrics = restored
        restart_schedule(engine, job, plan.total_steps, progress.step)
        if rank == 0:
            log.info(
                f"resumed from step {progress.step} (epoch {progress.epoch}) at lr {engine.get_lr()[0]:.3e} "
                f"with {world_size} workers"
            )

    nodes = node_count(world_size)
    parameter_share = largest_parameter_share(engine, model_parameters)
    if rank == 0:
        log.info(f"{world_size} workers on {nodes} node(s){format_layout(job, data_size, parameter_share)}")
    metrics = open_metrics(job, plan, resumed=restored is not None, unsent=unsent_metrics) if rank == 0 else None
    bar = ProgressSender(plan.progress_board) if rank == 0 and plan.progress_board else None
    timeline.mark("checkpoint_restore")
    train_data = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val") if plan.has_validation else None
    if val_data is not None and job.train.eval_at_start and progress.step == 0:
        evaluation, _ = evaluate(engine, layout, val_data, task, job, plan, tokenizer)
        if metrics:
            metrics.log(0, evaluation)
            log.info(f"step 0 (untrained) | eval {format_metrics(evaluation)}")

    engine.train()  # from_pretrained returns a model in eval mode: without this, dropout would stay off
    step_loss = torch.zeros(1)
    data_wait, allreduce = Clock(), Clock()  # time this rank waited for its next batch, and reduced gradients
    engine.allreduce_gradients = timed_calls(engine.allreduce_gradients, allreduce)
    window = Window({"data_wait": data_wait, "allreduce": allreduce})
    first_step_done, resumed_at = False, progress.step
    last_train_loss, final_result = None, None
    while progress.step < plan.total_steps:
        batches = step_batches(
            train_data,
            rank=data_rank,
            world_size=data_size,
            micro_batch_size=job.train.micro_batch_size,
            global_batch_size=job.global_batch_size,
            shuffle_seed=job.data.seed + progress.epoch,
            skip=progress.steps_in_epoch,
        )
        for micro_batches in timed(batches, data_wait):
            if not first_step_done:
                timeline.mark("first_batch")
            measure = metrics and progress.step == resumed_at + 1
            at_fullest = functools.partial(log_memory, metrics, progress.step, engine, memory_at_start, parameter_share) if measure else None
            step_loss += layout.train_step(engine, [task.model_inputs(batch) for batch in micro_batches], at_fullest)

            progress.step += 1
            progress.steps_in_epoch += 1
            progress.tokens += tokens_per_step
            window.steps += 1
            step = progress.step
            is_last = step >= plan.total_steps
            if not first_step_done:
                first_step_done = True
                timeline.mark("first_step")
                if metrics:
                    log_startup(metrics, step, timeline, flops_per_token)

            if step % job.train.log_every == 0 or is_last:
                last_train_loss = mean_over_ranks(step_loss / accum)
                elapsed = window.seconds()
                tokens_per_s = window.steps * tokens_per_step / elapsed
                if metrics:
                    logged = {"train/loss": last_train_loss, "train/lr": engine.get_lr()[0], "train/tokens_per_s": tokens_per_s}
                    logged["train/epoch"] = progress.epoch
                    logged["perf/flops_per_s"] = tokens_per_s * flops_per_token
                    if peak_flops:
                        logged["perf/mfu"] = mfu(tokens_per_s, flops_per_token, world_size, peak_flops)
                    logged |= {f"train/{name}_fraction": share for name, share in window.fractions(elapsed).items()}
                    logged["memory/peak_bytes"] = peak_bytes(job.scaling.use_gpu)
                    grad_norm = engine.get_global_grad_norm()
                    if grad_norm is not None:
                        logged["train/grad_norm"] = float(grad_norm)
                    metrics.log(step, logged)
                    eta_s = (plan.total_steps - step) * elapsed / window.steps
                    log.info(format_progress(step, plan.total_steps, last_train_loss, logged["train/lr"], tokens_per_s, eta_s))
                    if bar:
                        bar.step(step, {"loss": last_train_loss, "lr": logged["train/lr"], "tokens_per_s": tokens_per_s})
                window.restart()
            elif bar:
                bar.step(step)
            step_loss.zero_()

            # Results go to Ray (and through it to Tune) at evaluation and checkpoint steps.
            evaluating = is_last or (job.train.eval_every and step % job.train.eval_every == 0)
            saving = is_last or (job.checkpoint.every_steps and step % job.checkpoint.every_steps == 0)
            if evaluating or saving:
                report: dict[str, float] = {"step": step, "train/lr": engine.get_lr()[0]}
                if last_train_loss is not None:
                    report["train/loss"] = last_train_loss
                if evaluating and val_data is not None:
                    evaluation, predictions = evaluate(engine, layout, val_data, task, job, plan, tokenizer)
                    report.update(evaluation)
                    if metrics:
                        metrics.log(step, evaluation)
                        log.info(f"step {step} | eval {format_metrics(evaluation)}")
                        if is_last:
                            log_predictions(metrics, predictions, plan.label_names)
                if metrics:  # what Ray (or a Tune scheduler) sees is also in MLflow, even if the run is stopped now
                    metrics.flush()
                unsent = {"run_id": plan.run_id, "metrics": metrics.unsent()} if metrics else None
                manifest = manifest_text(job, step) if rank == 0 else None
                directory = checkpoint.save(engine, progress, rank, unsent, manifest) if saving else None
                if is_last:  # reported after the export, so whoever ends the run on it (a Tune scheduler) loses nothing
                    final_result = (report, directory)
                    break
                report_to_ray(report, directory)
                window.restart()  # keep evaluation and checkpoint time out of tokens/s
        else:  # the pass over the data ended before the last step: next epoch
            progress.epoch += 1
            progress.steps_in_epoch = 0

    export(engine, layout, job, plan, tokenizer, metrics, rank)
    if final_result:
        report_to_ray(*final_result)


def log_startup(metrics: MetricsLogger, step: int, timeline: Timeline, flops_per_token: int) -> None:
    phases = timeline.phases()
    logged = {f"time/startup/{phase}_s": seconds for phase, seconds in phases.items()}
    metrics.log(step, logged | {"time/first_step_s": timeline.total(), "perf/model_flops_per_token": flops_per_token})
    log.info(f"first optimizer step {timeline.total():.1f} s after the job started: {format_phases(phases)}")


def log_memory(metrics: MetricsLogger, step: int, engine, memory_at_start: int, parameter_share: float) -> None:
    metrics.log(step, {
        "memory/at_start_bytes": memory_at_start,
        "memory/model_state_bytes": model_state_bytes(engine.module, engine.optimizer),
        "memory/parameter_share": parameter_share,
    })


def largest_parameter_share(engine, model_parameters: int) -> float:
    """The most of the model's parameters one worker holds (every rank takes part): 1 unless tensor or pipeline
    parallelism split the model (ZeRO-3's shards are not counted: it gathers whole layers to compute)."""
    share = torch.tensor([sum(parameter_count(parameter) for parameter in engine.module.parameters()) / model_parameters])
    dist.all_reduce(share, op=dist.ReduceOp.MAX)
    return share.item()


def format_layout(job: JobConfig, data_size: int, parameter_share: float) -> str:
    if job.parallelism.layout == "data":
        return ""
    split = job.parallelism
    return (
        f": data x tensor x pipeline = {data_size} x {split.tensor} x {split.pipeline}, "
        f"each worker holding at most {parameter_share:.0%} of the model's parameters"
    )


def report_to_ray(result: dict[str, float], checkpoint_directory: str | None) -> None:
    """Ray Train copies this rank's part of the checkpoint into the run's storage; the local copy can go."""
    ray.train.report(result, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_directory) if checkpoint_directory else None)
    if checkpoint_directory:
        shutil.rmtree(checkpoint_directory, ignore_errors=True)


def log_predictions(metrics: MetricsLogger, predictions: dict[str, list], label_names: list[str]) -> None:
    """What the last evaluation predicted, for a person to look at: the confusion matrix of a classifier, or
    generated texts beside their references."""
    if label_names:
        from orchestrator.tracking.plots import confusion_matrix_plot  # see export()

        directory = tempfile.mkdtemp(prefix="orchestrator-plots-")
        confusion_matrix_plot(predictions["label"], predictions["predicted"], label_names, directory)
        deliver(lambda: metrics.client.log_artifacts(metrics.run_id, directory, "plots"), "the confusion matrix")
        shutil.rmtree(directory, ignore_errors=True)
    if "hypothesis" in predictions:
        rows = zip(predictions["reference"][:GENERATED_SAMPLES], predictions["hypothesis"][:GENERATED_SAMPLES])
        table = "reference\tgenerated\n" + "".join(f"{ref}\t{hyp}\n" for ref, hyp in rows)
        deliver(lambda: metrics.client.log_text(metrics.run_id, table, "eval/generated.tsv"), "the generated texts")


def export(engine, layout: DataParallel, job: JobConfig, plan: TrainPlan, tokenizer, metrics: MetricsLogger | None, rank: int) -> None:
    """The final model into the MLflow run as an MLflow model (tracking/model.py) holding the Hugging Face weights,
    tokenizer and the task it was trained for (what `predict` needs), registered; and the training curves."""
    directory = tempfile.mkdtemp(prefix="orchestrator-model-")
    hf_dir = os.path.join(directory, "hf")
    export_hf_model(engine, layout, hf_dir, TORCH_DTYPES[job.model.dtype], is_writer=rank == 0)
    if metrics:
        # imported here: mlflow.pyfunc and matplotlib would add a second to every worker's start, and only rank 0
        # exports, at the end
        from orchestrator.tracking.model import ARTIFACT_PATH, register, save_model
        from orchestrator.tracking.plots import training_curves

        tokenizer.save_pretrained(hf_dir)
        write_model_card(job, hf_dir)
        model_dir = os.path.join(directory, "mlflow_model")
        save_model(hf_dir, model_dir, job.task, plan.example_texts)
        deliver(lambda: metrics.client.log_artifacts(metrics.run_id, model_dir, ARTIFACT_PATH), "the model")
        if plan.registered_model:
            version = deliver(lambda: register(metrics.client, metrics.run_id, plan.registered_model), "the registration")
            log.info(f"registered the model as models:/{version.name}/{version.version}")
        plot = os.path.join(directory, "training_curves.png")
        training_curves(metrics.history, plot)
        deliver(lambda: metrics.client.log_artifact(metrics.run_id, plot, "plots"), "the training curves")
        metrics.close()
    shutil.rmtree(directory, ignore_errors=True)
