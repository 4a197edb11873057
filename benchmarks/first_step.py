"""Time to first step: from `ray job submit` to the first optimizer step of a job like jobs/gpt-tiny.yaml (GPT-2
tiny, ZeRO-2, 2 workers) on a warm local cluster, broken down into the phases the job marks
(orchestrator/train/timeline.py), against a bare PyTorch script (benchmarks/bare_first_step.py: torch and
transformers, the same model, one AdamW step on a batch of the same prepared split) from its process start to its
first step, in the same run.

The job is submitted `--runs` times, each followed by the bare script; the first submission warms what a cluster
keeps between jobs (the data cache, the OS page cache) and is reported apart; the others give the median of each
phase. The imports of a worker's training function are timed apart, in a plain process (`python -X importtime`),
by top-level package.

    python -m benchmarks.first_step [--smoke]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from benchmarks.common import GPT_TINY, REPO, Jobs, corpus_files, local_cluster, prepared_entry, write_results
from orchestrator.config.job import JobConfig
from orchestrator.models.families import FAMILIES
from orchestrator.train.timeline import PHASES

GOAL = 2.0  # the goal: submit to first step within twice the bare script's time


def bare_script_seconds(job: JobConfig) -> float:
    """Seconds from starting benchmarks/bare_first_step.py to the end of its first step, on the job's prepared data."""
    entry = prepared_entry(job)
    config_keys = FAMILIES[job.model.family].config_keys(job.model.dims_resolved())
    config_keys["vocab_size"] = Tokenizer.from_file(str(entry / "tokenizer.json")).get_vocab_size()
    command = [sys.executable, str(REPO / "benchmarks" / "bare_first_step.py"), str(entry / "train"), json.dumps(config_keys), str(job.train.micro_batch_size)]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])["first_step_at"] - started


# What a GPT-2 worker imports: the training loop's modules, and the model's, which transformers imports at first use
WORKER_MODULES = "orchestrator.train.loop, transformers.models.gpt2.modeling_gpt2"


def import_seconds(modules: str = WORKER_MODULES) -> dict[str, float]:
    """Import time of each top-level package that importing `modules` in a fresh process runs (the sum of its
    modules' own times: a package's import of another counts to the other), largest first."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {modules}"], capture_output=True, text=True, check=True, cwd=REPO)
    packages: dict[str, float] = {}
    for line in done.stderr.splitlines():  # "import time: self [us] | cumulative | module", after a header line
        if not line.startswith("import time:"):
            continue
        own, _, name = line.removeprefix("import time:").split("|")
        if own.strip().isdigit():
            package = name.strip().split(".")[0]
            packages[package] = packages.get(package, 0.0) + int(own) / 1e6
    return dict(sorted(packages.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one submission on a few files: checks that it works")
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    runs = 1 if args.smoke else args.runs
    timings, bare = [], []
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for index in range(runs):  # alternating, so that the machine's drift counts against neither
            name = f"first-step-{index}"
            submitted = time.time()
            figures = jobs.run(name, GPT_TINY | {"train": {"max_steps": 2, "log_every": 1}}, submit=True)
            [first_step] = figures.client.get_metric_history(figures.run.info.run_id, "time/first_step_s")
            from_submit = first_step.timestamp / 1000 - submitted
            timings.append({"submission": from_submit - first_step.value, **figures.startup(), "submit_to_first_step": from_submit})
            bare.append(bare_script_seconds(JobConfig.model_validate(jobs.job(name))))
    cold, warm = timings[0], timings[1:] or timings  # smoke: one run stands for both
    median = {key: statistics.median(run[key] for run in warm) for key in warm[0]}
    bare_median = statistics.median(bare)
    phases = ["submission", *(phase for phase in PHASES if phase in median)]
    imports = import_seconds()
    results = {
        "machine": f"{os.cpu_count()} CPU cores",
        "seconds_first_run": cold,
        "seconds_warm_runs": warm,
        "seconds_warm_median": median,
        "largest_phase": max(phases, key=median.get),
        "bare_script_seconds": bare,
        "bare_script_median": bare_median,
        "warm_over_bare": median["submit_to_first_step"] / bare_median,
        "goal_warm_over_bare": GOAL,
        "worker_import_seconds": imports,
    }
    table = ["| phase | warm, median s | first run s |", "|---|---|---|"]
    for phase in [*phases, "submit_to_first_step"]:
        table.append(f"| {phase.replace('_', ' ')} | {median[phase]:.1f} | {cold[phase]:.1f} |")
    table += [
        f"| bare PyTorch script, process start to first step | {bare_median:.1f} | {bare[0]:.1f} |",
        f"| **submit to first step / bare script** (goal ≤ {GOAL:g}) | **{results['warm_over_bare']:.2f}** | {cold['submit_to_first_step'] / bare[0]:.2f} |",
        "",
        f"A worker's imports in a plain process (`python -X importtime -c 'import {WORKER_MODULES}'`), by package: "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in list(imports.items())[:8])
        + f"; all {sum(imports.values()):.2f} s.",
    ]
    write_results("first_step", results, table)


if __name__ == "__main__":
    main()
