"""Time to first step: from `ray job submit` to the job's first optimizer step on a warm local cluster, broken
down into the phases the job marks (orchestrator/train/timeline.py): submission (job API to the driver process),
Python start-up, Ray connect, data preparation (a cache hit here), the MLflow run, the worker group's start,
model init, DeepSpeed init, checkpoint restore, first batch, first step.

The job is submitted `--runs` times; the first run warms what a cluster keeps between jobs (the data cache,
DeepSpeed's compiled ops, the OS page cache) and is reported apart; the others give the median of each phase.

    python -m benchmarks.first_step [--smoke]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import Jobs, corpus_files, local_cluster, write_results
from orchestrator.train.timeline import PHASES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one submission on a few files: checks that it works")
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    timings = []
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for index in range(runs):
            submitted = time.time()
            figures = jobs.run(f"first-step-{index}", {"train": {"max_steps": 2, "log_every": 1}}, submit=True)
            [first_step] = figures.client.get_metric_history(figures.run.info.run_id, "time/first_step_s")
            from_submit = first_step.timestamp / 1000 - submitted
            phases = figures.startup()
            timings.append({"submission": from_submit - first_step.value, **phases, "submit_to_first_step": from_submit})
    cold, warm = timings[0], timings[1:] or timings  # smoke: one run stands for both
    median = {key: statistics.median(run[key] for run in warm) for key in warm[0]}
    phases = ["submission", *(phase for phase in PHASES if phase in median)]
    results = {
        "machine": f"{os.cpu_count()} CPU cores",
        "seconds_first_run": cold,
        "seconds_warm_runs": warm,
        "seconds_warm_median": median,
        "largest_phase": max(phases, key=median.get),
    }
    table = ["| phase | warm, median s | first run s |", "|---|---|---|"]
    for phase in [*phases, "submit_to_first_step"]:
        table.append(f"| {phase.replace('_', ' ')} | {median[phase]:.1f} | {cold[phase]:.1f} |")
    write_results("first_step", results, table)


if __name__ == "__main__":
    main()
