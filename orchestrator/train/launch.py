"""The driver side of a training job: a driver session (train/session.py) running a Ray Train TorchTrainer of
train.loop."""

import json
import time

import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from orchestrator.config.job import JobConfig
from orchestrator.config.load import dump_yaml
from orchestrator.config.names import derived_name
from orchestrator.config.paths import delete_claimed, path_inside, storage_path
from orchestrator.config.redact import redact_config
from orchestrator.data.pipeline import PreparedData, example_texts
from orchestrator.tracking.run import TrackedRun, start_run
from orchestrator.train.deepspeed_config import deepspeed_config
from orchestrator.train.entry import train_worker, train_worker_then_end_group
from orchestrator.train.progress import live_progress
from orchestrator.train.session import SESSION_KINDS, driver_session
from orchestrator.train.timeline import Timeline
from orchestrator.train.worker import TrainPlan


def build_trainer(
    job: JobConfig,
    plan: TrainPlan,
    name: str,
    storage: str,
    keep: int,
    callbacks: tuple = (),
) -> TorchTrainer:
    """The Ray Train run of one job: `name` under `storage` is where its checkpoints go and how it resumes."""
    return TorchTrainer(
        train_worker,
        train_loop_config={"job": job, "plan": plan},
        torch_config=TorchConfig(backend="nccl" if job.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            # elastic: Ray Train starts with what the cluster has, at least min_workers, and restarts smaller on losses
            num_workers=(job.scaling.min_workers, job.scaling.num_workers) if job.scaling.min_workers else job.scaling.num_workers,
            use_gpu=job.scaling.use_gpu,
            resources_per_worker={"CPU": job.scaling.cpus_per_worker},
            placement_strategy=job.scaling.placement,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep),
            failure_config=ray.train.FailureConfig(max_failures=job.checkpoint.max_failures),
            callbacks=list(callbacks),
            # Ray Train's INFO lines (a dict per report, each checkpoint, the worker group) stay in its log files
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )


def local_trainer(job: JobConfig, plan: TrainPlan) -> TorchTrainer:
    """The run of a one-worker job in this process (Ray Train V2's local mode, in train/local.py's one_process_group):
    no worker group to start, no Train storage or retries; the loop reports where the plan says."""
    return TorchTrainer(
        train_worker_then_end_group,
        train_loop_config={"job": job, "plan": plan},
        scaling_config=ray.train.ScalingConfig(num_workers=0),
    )


def registered_name(job: JobConfig, job_name: str | None) -> str:
    return job.tracking.registered_model or job.tracking.run_name or job_name


def train_plan(
    data: PreparedData,
    run: TrackedRun,
    steps: int,
    timeline: Timeline,
    registered_model: str | None,
    initial_checkpoint: str | None = None,
    progress_board=None,
    tune_metric: str | None = None,
) -> TrainPlan:
    return TrainPlan(
        total_steps=steps,
        tokenizer_json=data.tokenizer_json,
        # Each worker reads its rows of every step from the shards itself (data/feed.py): no dataset goes through
        # Ray Train.
        train_split=str(data.train.directory),
        val_split=str(data.val.directory) if data.val is not None else None,
        tracking_uri=run.uri,
        run_id=run.run_id,
        timeline=timeline,
        label_names=data.label_names,
        example_texts=example_texts(data),
        registered_model=registered_model,
        initial_checkpoint=initial_checkpoint,
        progress_board=progress_board,
        tune_metric=tune_metric,
        chat_template=data.chat_template,
    )


def job_artifacts(job: JobConfig) -> dict[str, str]:
    return {
        "job.yaml": dump_yaml(redact_config(job.model_dump(mode="json"))),
        "deepspeed_config.json": json.dumps(redact_config(deepspeed_config(job)), indent=2),
    }


RUN_DIR = "run"  # the session kind (train/session.py) of a training run's directory


def forget_run(storage: str, run_name: str) -> None:
    """--restart: the run's checkpoints and its remembered MLflow run go, so the job starts over in a new run. Only
    a run directory orchestrator created is deleted."""
    if deleted := delete_claimed(storage, run_name, RUN_DIR, SESSION_KINDS[RUN_DIR].name_field):
        print(f"--restart: deleted the checkpoints in {deleted}", flush=True)


def launch(job: JobConfig, job_name: str | None, restart: bool = False, address: str | None = None) -> tuple[ray.train.Result, TrackedRun]:
    """`job_name`: the job file's name, a valid name (config/names.py); the default of the run's name, with the
    time after it. Needed only when the job sets no tracking.run_name."""
    run_name = job.tracking.run_name or derived_name(job_name, time.strftime("-%Y%m%d-%H%M%S"))
    storage = storage_path(job)
    run_dir = path_inside(storage, run_name, SESSION_KINDS[RUN_DIR].name_field)
    if restart:
        forget_run(storage, run_name)
    with driver_session(job, run_dir, RUN_DIR, lambda: start_run(job, run_name, run_dir, artifacts=job_artifacts(job)), address) as session:
        with live_progress(session.steps) as board:  # a bar in a terminal; log lines only in job logs
            plan = train_plan(session.data, session.run, session.steps, session.timeline, registered_model=registered_name(job, job_name), progress_board=board)
            result = build_trainer(job, plan, run_name, storage, keep=job.checkpoint.keep).fit()
        summary = {key: round(value, 4) for key, value in result.metrics.items() if isinstance(value, float)}
        print(f"finished: {summary}", flush=True)
    return result, session.run
