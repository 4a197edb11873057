"""Activation checkpointing: a worker's peak memory with and without it, next to what `orchestrator plan` counts,
and what the recomputation costs in tokens/s.

One worker trains the benchmarks' GPT-2 (4x256) at seq_len 512 (activations dominate there) for a few steps, with
`train.activation_checkpointing` off, then on. Peak memory is rank 0's `memory/peak_bytes` above its process's start,
with glibc's retention of freed memory off (MALLOC_MMAP_THRESHOLD_, as in benchmarks/zero_memory.py): on CPU the peak
resident set is then the peak of memory in use. That mode trains slower than a user's job, the same for both runs.

    python -m benchmarks.activation_memory [--smoke]
"""

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import Jobs, corpus_files, local_cluster, write_results
from orchestrator.config.job import JobConfig
from orchestrator.train.plan import activation_bytes, model_size

SEQ_LEN = 512
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 steps on a few files: checks that it works")
    args = parser.parse_args()
    runs = {}
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for checkpointing in (False, True):
            name = f"activations-{'checkpointed' if checkpointing else 'kept'}"
            settings = {
                "model": {"dims": {"max_positions": SEQ_LEN}},
                "data": {"seq_len": SEQ_LEN},
                "train": {"max_steps": 2 if args.smoke else 8, "log_every": 1 if args.smoke else 2, "activation_checkpointing": checkpointing},
            }
            figures = jobs.run(name, settings, env_vars=RETURN_FREED_MEMORY)
            job = JobConfig.model_validate(jobs.job(name))
            runs[name] = {
                "peak_above_start_bytes": figures.last["memory/peak_bytes"] - figures.last["memory/at_start_bytes"],
                "plan_activation_bytes": activation_bytes(job, model_size(job)),
                "tokens_per_s": figures.steady("train/tokens_per_s"),
            }
    kept, checkpointed = runs["activations-kept"], runs["activations-checkpointed"]
    results = {
        "machine": f"{os.cpu_count()} CPU cores, 1 worker, fp32",
        "runs": runs,
        "peak_saved_bytes": kept["peak_above_start_bytes"] - checkpointed["peak_above_start_bytes"],
        "plan_saved_bytes": kept["plan_activation_bytes"] - checkpointed["plan_activation_bytes"],
        "tokens_per_s_ratio": checkpointed["tokens_per_s"] / kept["tokens_per_s"],
    }
    mib = 2**20
    table = [
        f"GPT-2 4x256, seq_len {SEQ_LEN}, micro batch 8; {results['machine']}.",
        "",
        "| activations | peak memory above process start | plan's activation count | tokens/s |",
        "|---|---|---|---|",
        *(
            f"| {name.split('-')[1]} | {run['peak_above_start_bytes'] / mib:,.0f} MiB | {run['plan_activation_bytes'] / mib:,.0f} MiB | {run['tokens_per_s']:,.0f} |"
            for name, run in runs.items()
        ),
        f"| saved / ratio | {results['peak_saved_bytes'] / mib:,.0f} MiB | {results['plan_saved_bytes'] / mib:,.0f} MiB | {results['tokens_per_s_ratio']:.2f}x |",
    ]
    write_results("activation_memory", results, table)


if __name__ == "__main__":
    main()
