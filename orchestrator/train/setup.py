"""A worker's set-up, before its first step: the model and its DeepSpeed engine in the job's parallel layout, restored
from a checkpoint when there is one, and the reporter of its rank (train/reporting.py). Every rank runs all of it:
the collectives in it (DeepSpeed's, the node count, the parameter share) need them all."""

import ray.train
import torch
import torch.distributed as dist

from orchestrator.config.job import JobConfig
from orchestrator.data.tokenizers import from_json
from orchestrator.models.build import build_model
from orchestrator.models.tasks import TASKS
from orchestrator.train import checkpoint, results
from orchestrator.train.clocks import Clock, timed_calls
from orchestrator.train.engine import build_engine, partitioned_construction, restart_schedule
from orchestrator.train.flops import device_peak_flops, model_flops_per_token, parameter_count
from orchestrator.train.memory import current_bytes
from orchestrator.train.parallel import layout as parallel_layout
from orchestrator.train.reporting import SilentReporter, open_reporter
from orchestrator.train.worker import Progress, TrainPlan, Worker


def setup(job: JobConfig, plan: TrainPlan) -> tuple[Worker, SilentReporter]:
    answers_to = results.answers_to(plan.tune_metric)
    rank, world_size = answers_to.rank_and_size()
    timeline = plan.timeline
    memory_at_start = current_bytes(job.scaling.use_gpu)
    tokenizer = from_json(plan.tokenizer_json)
    tokenizer.chat_template = plan.chat_template
    model_construction = partitioned_construction(job, world_size)
    model = build_model(job.model, job.task, tokenizer, plan.label_names, job.train.seed, job.train.activation_checkpointing)
    model_parameters = sum(parameter_count(parameter) for parameter in model.parameters())
    trainable_parameters = sum(parameter_count(parameter) for parameter in model.parameters() if parameter.requires_grad)
    flops_per_token = model_flops_per_token(model, job.data.seq_len)
    layout = parallel_layout(job)
    timeline.mark("model_init")
    engine = build_engine(job, layout.wrap(model), plan.total_steps, world_size)
    data_rank, data_size = layout.data_rank(engine)
    timeline.mark("deepspeed_init")

    restored = restore(engine, job, plan, rank, answers_to)
    progress, unsent_metrics = restored or (Progress(), {})
    clocks = {"data_wait": Clock(), "allreduce": Clock()}
    engine.allreduce_gradients = timed_calls(engine.allreduce_gradients, clocks["allreduce"])
    worker = Worker(
        job=job,
        plan=plan,
        rank=rank,
        world_size=world_size,
        task=TASKS[job.task].for_model(model.config),
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
        trainable_share=trainable_parameters / model_parameters,
        memory_at_start=memory_at_start,
        clocks=clocks,
        answers_to=answers_to,
        model_construction=model_construction,
    )
    reporter = open_reporter(worker, unsent_metrics)
    timeline.mark("checkpoint_restore")
    engine.train()  # from_pretrained returns a model in eval mode: without this, dropout would stay off
    return worker, reporter


def restore(engine, job: JobConfig, plan: TrainPlan, rank: int, answers_to: results.TrainRun | results.TuneTrial) -> tuple[Progress, dict] | None:
    """Where the checkpoint to continue from left training, and the metrics it had not delivered; None on a fresh
    start. Ray Train's own checkpoint (this run restarted after a failure) comes before the one the run started from."""
    source = answers_to.checkpoint()
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
