"""Data-parallel scaling: the same job on 1 worker and on 2, at a fixed global batch and a fixed share of the
machine (1 worker with all the cores; 2 workers with half each), and where each one's step time goes: waiting for
data, all-reducing gradients, and the rest (forward, backward, optimizer), as its workers measured them.

    python -m benchmarks.scaling [--smoke]
"""

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import Jobs, corpus_files, local_cluster, write_results


def layouts(cores: int) -> dict[str, dict]:
    """Global batch 16 of micro batches of 8 in both: one worker accumulates two, two workers take one each. Without
    dropout, both train on the same batches in the same order from the same weights."""
    return {
        "1 worker": {"scaling": {"num_workers": 1, "cpus_per_worker": cores}, "train": {"grad_accum_steps": 2}},
        "2 workers": {"scaling": {"num_workers": 2, "cpus_per_worker": cores / 2}, "train": {"grad_accum_steps": 1}},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few files: checks that it works")
    args = parser.parse_args()
    steps, cores = (20 if args.smoke else 100), os.cpu_count()
    results: dict = {"machine": f"{cores} CPU cores", "global_batch": 16, "steps": steps, "runs": {}}
    losses = {}
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for name, layout in layouts(cores).items():
            layout["train"]["max_steps"] = steps
            figures = jobs.run(f"scaling-{name.replace(' ', '-')}", layout | {"model": {"dropout": 0.0}})
            losses[name] = figures.history("train/loss")
            data_wait, allreduce = figures.steady("train/data_wait_fraction"), figures.steady("train/allreduce_fraction")
            results["runs"][name] = {
                "samples_per_s": figures.steady("train/tokens_per_s") / jobs.base["data"]["seq_len"],
                "data_wait_fraction": data_wait,
                "allreduce_fraction": allreduce,
                "compute_fraction": 1 - data_wait - allreduce,
            }
    one, two = results["runs"]["1 worker"], results["runs"]["2 workers"]
    results["two_over_one_samples_per_s"] = two["samples_per_s"] / one["samples_per_s"]
    results["final_loss"] = {name: history[-1] for name, history in losses.items()}
    table = ["| workers | samples/s | compute | all-reduce | data wait |", "|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        shares = " | ".join(f"{100 * run[key]:.1f}%" for key in ("compute_fraction", "allreduce_fraction", "data_wait_fraction"))
        table.append(f"| {name} | {run['samples_per_s']:.1f} | {shares} |")
    table += [
        "",
        f"2 workers / 1 worker samples/s: {results['two_over_one_samples_per_s']:.2f} ({results['machine']}, global batch 16); "
        f"final loss {results['final_loss']['1 worker']:.4f} and {results['final_loss']['2 workers']:.4f}.",
    ]
    write_results("scaling", results, table)


if __name__ == "__main__":
    main()
