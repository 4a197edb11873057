"""Sweep benchmark: what a trial costs beyond its training, and ASHA against FIFO on the same search.

Runs two sweeps of jobs/gpt-tiny.yaml (one worker per trial, so a 2-CPU machine runs two trials at a time)
with the same search space and seed: FIFO, then ASHA; then a short FIFO sweep of 2-worker trials (each a Ray Train
worker group: one at a time here) for their start-up. Prints the figures beside their goals, writes
benchmarks/results/sweep_overhead.json and a markdown table.

    python -m benchmarks.sweep_overhead            # about 4 minutes on 2 CPU cores
    python -m benchmarks.sweep_overhead --smoke    # 2 short trials per sweep: checks that it works
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from benchmarks.common import REPO, local_cluster, write_results
from orchestrator.config.load import load_sweep
from orchestrator.tune.sweep import run_sweep

# The goals these figures answer: trial start to first step, seconds, by workers per trial; ASHA's wall time over
# FIFO's; their best metrics' relative difference
STARTUP_GOAL_S = {1: 8.0, 2: 15.0}
ASHA_OVER_FIFO_GOAL = 0.5
BEST_METRIC_GOAL = 0.02


def sweep_file(directory: Path, scheduler: dict, samples: int, steps: int, workers: int) -> Path:
    sweep = {
        "name": f"bench-{scheduler['name']}-{workers}w-{int(time.time())}",
        "base": str(REPO / "jobs" / "gpt-tiny.yaml"),
        "overrides": {
            "train.max_steps": steps,
            "train.eval_every": steps // 6,
            "train.eval_batches": 5,
            "train.log_every": 1,
            "scaling.num_workers": workers,
            "checkpoint.dir": str(directory / "runs"),
            "tracking.experiment": "benchmark-sweeps",
        },
        "search_space": {
            "train.optimizer.lr": {"loguniform": [1e-4, 3e-3]},
            "train.schedule.name": {"choice": ["constant", "linear", "cosine", "exponential"]},
        },
        "scheduler": scheduler,
        "num_samples": samples,
        "seed": 0,
    }
    path = directory / f"{scheduler['name']}-{workers}w.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def trial_breakdown(client: MlflowClient, run_id: str) -> dict[str, float]:
    """Where a trial's wall time went, from its MLflow run: its run's span (from its opening), training, the start-up
    (from the trial's start: a process's first trial counts the process's start), and the end (export, handoff)."""
    run = client.get_run(run_id)
    loss = sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)
    first_step_s = run.data.metrics["time/first_step_s"]
    engine_s = run.data.metrics["time/startup/model_init_s"] + run.data.metrics["time/startup/deepspeed_init_s"]
    wall_s = (run.info.end_time - run.info.start_time) / 1000
    training_s = (loss[-1].timestamp - loss[0].timestamp) / 1000
    return {
        "wall_s": wall_s,
        "training_s": training_s,
        "overhead_s": wall_s - training_s,
        "start_to_first_step_s": first_step_s,
        "of_which_model_and_engine_init_s": engine_s,
        "of_which_processes_imports_and_first_step_s": first_step_s - engine_s,
        "end_s": (run.info.end_time - loss[-1].timestamp) / 1000,
    }


def run(scheduler: dict, samples: int, steps: int, directory: Path, workers: int = 1) -> dict:
    sweep = load_sweep(sweep_file(directory, scheduler, samples, steps, workers))
    started = time.perf_counter()
    results, parent = run_sweep(sweep)
    wall_s = time.perf_counter() - started
    best = results.get_best_result(metric=sweep.config.metric, mode=sweep.config.mode, scope="last")
    client = MlflowClient(parent.uri)
    children = client.search_runs([parent.experiment_id], f"tags.mlflow.parentRunId = '{parent.run_id}'")
    finished = [child for child in children if child.data.tags.get("sweep.stopped_at_step") is None]
    return {
        "scheduler": scheduler["name"],
        "trials": len(children),
        "stopped_early": len(children) - len(finished),
        "wall_s": wall_s,
        "best_eval_loss": best.metrics["eval/loss"],
        "trials_run_to_the_end": [trial_breakdown(client, child.info.run_id) for child in finished],
    }


def trial_mean(sweep: dict) -> dict[str, float]:
    """The mean of each figure over the trials run to the end, and the longest start-up (a process's first trial)."""
    trials = sweep["trials_run_to_the_end"]
    mean = {key: statistics.mean(trial[key] for trial in trials) for key in trials[0]}
    return mean | {"start_to_first_step_longest_s": max(trial["start_to_first_step_s"] for trial in trials)}


def goal(figure: str) -> str:
    if not figure.startswith("start_to_first_step"):
        return ""
    return " / ".join(f"≤ {seconds:g} s" for seconds in STARTUP_GOAL_S.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 short trials per sweep")
    args = parser.parse_args()
    samples, steps = (2, 12) if args.smoke else (8, 60)
    with local_cluster(), tempfile.TemporaryDirectory() as tmp:
        fifo = run({"name": "fifo"}, samples, steps, Path(tmp))
        asha = run({"name": "asha", "grace_period": steps // 6, "reduction_factor": 2}, samples, steps, Path(tmp))
        two_workers = run({"name": "fifo"}, 1 if args.smoke else 2, steps, Path(tmp), workers=2)

    mean = {workers: trial_mean(sweep) for workers, sweep in ((1, fifo), (2, two_workers))}
    figures = {
        "mode": "smoke" if args.smoke else "full",
        "per_trial_mean": mean[1],
        "per_trial_mean_2_workers": mean[2],
        "fifo": fifo,
        "asha": asha,
        "fifo_2_workers": two_workers,
        "asha_over_fifo_wall_time": asha["wall_s"] / fifo["wall_s"],
        "best_metric_difference": abs(asha["best_eval_loss"] - fifo["best_eval_loss"]) / abs(fifo["best_eval_loss"]),
    }
    table = [
        "| figure | 1-worker trials | 2-worker trials | goal |",
        "|---|---|---|---|",
        *(f"| per trial: {key} | {mean[1][key]:.1f} | {mean[2][key]:.1f} | {goal(key)} |" for key in mean[1]),
        f"| FIFO: trials, wall time s | {fifo['trials']}, {fifo['wall_s']:.0f} | {two_workers['trials']}, {two_workers['wall_s']:.0f} | |",
        f"| ASHA: trials ({asha['stopped_early']} stopped early), wall time s | {asha['trials']}, {asha['wall_s']:.0f} | | |",
        f"| ASHA / FIFO wall time | {figures['asha_over_fifo_wall_time']:.2f} | | ≤ {ASHA_OVER_FIFO_GOAL:g} |",
        f"| best eval/loss FIFO / ASHA (difference) | {fifo['best_eval_loss']:.4f} / {asha['best_eval_loss']:.4f} ({100 * figures['best_metric_difference']:.1f}%) | | ≤ {100 * BEST_METRIC_GOAL:g}% |",
    ]
    write_results("sweep_overhead", figures, table)


if __name__ == "__main__":
    main()
