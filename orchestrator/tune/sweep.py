"""A sweep: Ray Tune runs trials of the base job, each trial a full Ray Train + DeepSpeed run of its own.

Driver (`run_sweep`): a driver session (train/session.py) that prepares the data once for every trial and opens
the parent MLflow run, in which the Tune experiment runs (or resumes) and writes its summary into the parent run.

Trial (`run_trial`, a Tune function trainable): build the trial's job, open its nested MLflow run, and train. A trial
of several workers holds no CPU itself and fits a TorchTrainer whose results and checkpoints are passed on to Tune as
they come. A trial of one worker holds that worker's resources and trains in its own process (Ray Train V2's local
mode), reporting to Tune itself: no worker group and controller to start, which took most of a short trial's time. A
trial started from a Tune checkpoint (a resumed sweep, or PBT exploiting a better trial) continues from it, with the
learning rate and schedule of its own, possibly just mutated, config.
"""

import itertools
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import ray
import ray.train
from ray import tune
from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue

from orchestrator.config.job import JobConfig
from orchestrator.config.load import LoadedSweep
from orchestrator.config.names import derived_name
from orchestrator.config.paths import path_inside, storage_path
from orchestrator.data.pipeline import PreparedData, check_sizes
from orchestrator.tracking.run import TrackedRun, ends_with_outcome, start_run
from orchestrator.tracking.sweep import start_sweep_run, summarize_sweep, trial_run_dir
from orchestrator.train.launch import build_trainer, job_artifacts, local_trainer, train_plan
from orchestrator.train.local import one_process_group
from orchestrator.train.session import SESSION_KINDS, driver_session
from orchestrator.train.timeline import Timeline
from orchestrator.tune.space import param_space, search_algorithm, trial_scheduler, trials_at_once

TRAIN_CHECKPOINTS_KEPT = 2  # per trial attempt; Tune keeps the trial's history (each result is copied to it)
TRAIN_RUNS = "train_runs"  # in the sweep's directory: the Train runs of trial attempts
SWEEP_DIR = "sweep"  # the session kind (train/session.py) of the directory a sweep keeps its trials in


@dataclass
class SweepContext:
    """What every trial gets from the driver (through the object store)."""

    sweep: LoadedSweep
    data: PreparedData
    total_steps: int
    parent: TrackedRun
    sweep_dir: str


class ResultsToTune(UserCallback):
    """Passes a trial's Train results to Tune. The callback half runs in the Train controller: it hands each result
    and its checkpoint over, and holds the run until Tune has taken them, so that a checkpoint is never rotated away
    before Tune has copied it. `forward` runs in the trial and reports them to Tune."""

    def __init__(self):
        self.results = Queue(actor_options={"num_cpus": 0})
        self.taken = Queue(actor_options={"num_cpus": 0})

    def after_report(self, run_context, metrics: list[dict], checkpoint: ray.train.Checkpoint | None) -> None:
        self.results.put((metrics[0], checkpoint))
        self.taken.get()

    def forward(self, trainer, metric: str) -> None:
        """Fits `trainer` (built with this callback) on a thread while reporting its results to Tune."""
        outcome: dict[str, BaseException] = {}

        def fit() -> None:
            try:
                trainer.fit()
            except BaseException as err:  # noqa: BLE001 - re-raised in the trial below
                outcome["error"] = err
            finally:
                self.results.put(None)

        threading.Thread(target=fit, name="trial-fit", daemon=True).start()
        while (item := self.results.get()) is not None:
            metrics, checkpoint = item
            if metric in metrics:  # Tune requires the sweep's metric in every result
                tune.report(metrics, checkpoint=checkpoint)
            self.taken.put(True)
        if "error" in outcome:
            raise outcome["error"]


# Trials this process has run: Tune starts a process per trial running at once and reuses it for the next ones
TRIALS_IN_THIS_PROCESS = itertools.count()


def trial_start() -> float:
    """When the trial started: a process's first trial with the process (its Python, Ray and library imports count),
    a later one now."""
    return psutil.Process().create_time() if next(TRIALS_IN_THIS_PROCESS) == 0 else time.time()


def run_trial(values: dict[str, Any], context: SweepContext) -> None:
    timeline = Timeline(started=trial_start())  # the trial's start-up
    sweep = context.sweep
    trial_id = tune.get_context().get_trial_id()
    job = sweep.trial_job(values)
    job.tracking.uri = context.parent.uri  # as the driver resolved it: a relative default means another thing here
    check_sizes(job, context.data)
    run = start_run(
        job,
        derived_name(sweep.name, f"-{trial_id}"),
        trial_run_dir(context.sweep_dir, trial_id),
        artifacts=job_artifacts(job),
        tags={
            "mlflow.parentRunId": context.parent.run_id,
            "sweep.name": sweep.name,
            "sweep.trial_id": trial_id,
            "sweep.varied": ", ".join(values),
        },
        params={f"sweep.{key}": value for key, value in values.items()},
    )
    # Tune ends a trial its scheduler stops with SystemExit: the sweep's summary ends that run (FINISHED, tagged
    # with the step it stopped at), not as a run a person killed. Anything else that fails from here ends it.
    with ends_with_outcome(run, stopped=None):
        timeline.mark("mlflow_run")
        start_from = tune.get_checkpoint()
        in_process = trains_in_trial_process(job)
        # Trials register no model: the sweep registers its best trial's (tracking/sweep.py).
        plan = train_plan(
            context.data,
            run,
            context.total_steps,
            timeline,
            registered_model=None,
            initial_checkpoint=start_from.path if start_from else None,
            tune_metric=sweep.config.metric if in_process else None,
        )
        if in_process:
            with one_process_group():
                local_trainer(job, plan).fit()
            return
        # A new Train run per attempt: Train would otherwise resume its own last checkpoint, not the one Tune gives.
        attempt = derived_name(trial_id, time.strftime("-%Y%m%d-%H%M%S"))
        bridge = ResultsToTune()
        train_runs = f"{context.sweep_dir}/{TRAIN_RUNS}"  # a fixed name inside the checked sweep directory
        trainer = build_trainer(job, plan, attempt, train_runs, TRAIN_CHECKPOINTS_KEPT, callbacks=(bridge,))
        bridge.forward(trainer, sweep.config.metric)


def trains_in_trial_process(job: JobConfig) -> bool:
    """One worker, not elastic: the trial's own process is the worker."""
    return job.scaling.num_workers == 1 and not job.scaling.min_workers


def trial_resources(job: JobConfig) -> dict[str, float]:
    """A trial training in its own process holds its worker's resources; one that fits a TorchTrainer must hold no
    CPU, or its workers starve (Tune counts a trial of no resources as needing none; `memory: 1` keeps it placed)."""
    if trains_in_trial_process(job):
        return {"cpu": job.scaling.cpus_per_worker, "gpu": int(job.scaling.use_gpu)}
    return {"cpu": 0, "memory": 1}


def run_sweep(sweep: LoadedSweep, address: str | None = None) -> tuple[tune.ResultGrid, TrackedRun]:
    config, job = sweep.config, sweep.base_job
    sweep_dir = path_inside(storage_path(job), sweep.name, SESSION_KINDS[SWEEP_DIR].name_field)
    with driver_session(job, sweep_dir, SWEEP_DIR, lambda: start_sweep_run(sweep, sweep_dir), address) as session:
        random.seed(config.seed)  # PBT and PB2 draw their perturbations from these
        np.random.seed(config.seed)
        at_once = trials_at_once(ray.cluster_resources(), job, config.max_concurrent_trials)
        print(f"{at_once} trial(s) at a time, {job.scaling.num_workers} worker(s) each, {session.steps} steps per trial", flush=True)
        context = SweepContext(sweep, session.data, session.steps, session.run, sweep_dir)
        results = tuner(sweep, context, session.steps, at_once).fit()
        summarize_sweep(session.run, sweep, results, sweep_dir, session.steps)
    return results, session.run


def tuner(sweep: LoadedSweep, context: SweepContext, steps: int, at_once: int) -> tune.Tuner:
    """The sweep's Tune experiment in `context.sweep_dir`: restored where it ran before (finished trials are kept)."""
    config, job = sweep.config, sweep.base_job
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), trial_resources(job))
    if tune.Tuner.can_restore(context.sweep_dir):
        print(f"resuming the sweep in {context.sweep_dir}: finished trials are kept", flush=True)
        return tune.Tuner.restore(context.sweep_dir, trainable, resume_unfinished=True, resume_errored=False)
    return tune.Tuner(
        trainable,
        param_space=param_space(config),
        tune_config=tune.TuneConfig(
            metric=config.metric,
            mode=config.mode,
            search_alg=search_algorithm(config, at_once),
            scheduler=trial_scheduler(config, job, steps),
            num_samples=config.num_samples,
            max_concurrent_trials=at_once,
            time_budget_s=config.time_budget_s,
            # A trial's process runs the next trial: its start (Python, Ray, torch, transformers, DeepSpeed: about
            # 6 s on 2 cores) is paid once per process, not once per trial
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=storage_path(job),
            # PBT and PB2 restore a trial from the checkpoint another trial had when it was exploited, seconds
            # later, while that trial trains on: a pruned one is gone by then (seen: DeepSpeed found no state to
            # load, and the exploiting trial failed). They keep every trial checkpoint.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None if config.scheduler.name in ("pbt", "pb2") else job.checkpoint.keep),
            # A trial training in its own process has no Train run to restart its worker: Tune restarts the trial
            # from its last checkpoint instead, as often.
            failure_config=tune.FailureConfig(max_failures=job.checkpoint.max_failures if trains_in_trial_process(job) else 0),
        ),
    )
