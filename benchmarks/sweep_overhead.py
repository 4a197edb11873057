"""Sweep benchmark: what a trial costs beyond its training, and ASHA against FIFO on the same search.

Runs two sweeps of jobs/gpt-tiny.yaml (one worker per trial, so a 2-CPU machine runs two trials at a time)
with the same search space and seed: FIFO, then ASHA. Prints the figures, writes
benchmarks/results/sweep_overhead.json and a markdown table.

    python -m benchmarks.sweep_overhead            # about 6 minutes on 2 CPU cores
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


def sweep_file(directory: Path, scheduler: dict, samples: int, steps: int) -> Path:
    sweep = {
        "name": f"bench-{scheduler['name']}-{int(time.time())}",
        "base": str(REPO / "jobs" / "gpt-tiny.yaml"),
        "overrides": {
            "train.max_steps": steps,
            "train.eval_every": steps // 6,
            "train.eval_batches": 5,
            "train.log_every": 1,
            "scaling.num_workers": 1,
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
    path = directory / f"{scheduler['name']}.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def trial_breakdown(client: MlflowClient, run_id: str) -> dict[str, float]:
    """Where a trial's wall time went, from its MLflow run: start-up, training, and the end (export, handoff)."""
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
        "of_which_worker_start_and_first_step_s": first_step_s - engine_s,
        "end_s": wall_s - first_step_s - training_s,
    }


def run(scheduler: dict, samples: int, steps: int, directory: Path) -> dict:
    sweep = load_sweep(sweep_file(directory, scheduler, samples, steps))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 short trials per sweep")
    args = parser.parse_args()
    samples, steps = (2, 12) if args.smoke else (8, 60)
    with local_cluster(), tempfile.TemporaryDirectory() as tmp:
        fifo = run({"name": "fifo"}, samples, steps, Path(tmp))
        asha = run({"name": "asha", "grace_period": steps // 6, "reduction_factor": 2}, samples, steps, Path(tmp))

    trials = fifo["trials_run_to_the_end"]
    mean = {key: statistics.mean(trial[key] for trial in trials) for key in trials[0]}
    figures = {
        "mode": "smoke" if args.smoke else "full",
        "per_trial_mean": mean,
        "fifo": fifo,
        "asha": asha,
        "asha_over_fifo_wall_time": asha["wall_s"] / fifo["wall_s"],
    }
    table = [
        "| figure | value |",
        "|---|---|",
        *(f"| per trial: {key} | {value:.1f} |" for key, value in mean.items()),
        f"| FIFO: {fifo['trials']} trials, wall time s | {fifo['wall_s']:.0f} |",
        f"| ASHA: {asha['trials']} trials ({asha['stopped_early']} stopped early), wall time s | {asha['wall_s']:.0f} |",
        f"| ASHA / FIFO wall time | {figures['asha_over_fifo_wall_time']:.2f} |",
        f"| best eval/loss FIFO / ASHA | {fifo['best_eval_loss']:.4f} / {asha['best_eval_loss']:.4f} |",
    ]
    write_results("sweep_overhead", figures, table)


if __name__ == "__main__":
    main()
