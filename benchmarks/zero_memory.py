"""ZeRO memory: per-worker peak memory and model-state bytes for ZeRO stages 0-3 (and CPU offload) with 2 workers,
on a GPT-2 of 150M+ parameters in bf16 mixed precision, next to what DeepSpeed's estimators and the ZeRO paper
(Rajbhandari et al. 2020, section 5: 2 + 2 + 12 bytes per parameter with Adam) predict per worker.

Measured by rank 0 of each run: `memory/model_state_bytes` (the distinct tensor storages held by the engine's module
and optimizer, at the second step's gradient reduction) and `memory/peak_bytes` (the process's peak resident set on
CPU, peak allocated memory on GPU), also shown above the worker process's own start (`memory/at_start_bytes`: Python,
torch, Ray, DeepSpeed). On a CPU machine "offload" moves states to the same memory, so it saves nothing there.

Each configuration runs twice on CPU. Once as a user's job runs (peak RSS), where glibc keeps memory that large
short-lived tensors freed (ZeRO-3's gathered parameters, Adam's updates) for reuse; once with that retention off
(MALLOC_MMAP_THRESHOLD_, in the job's runtime environment: every block over 64 KiB goes back to the system when
freed), where the peak RSS is the peak of memory in use: the CPU counterpart of the peak allocated memory a GPU
reports. That mode trains about 40% slower, so it is a measurement, not a setting.

    python -m benchmarks.zero_memory [--smoke]
"""

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import Jobs, corpus_files, local_cluster, write_results
from orchestrator.config.job import JobConfig
from orchestrator.train.plan import OPTIONS, deepspeed_estimate, model_size, paper_bytes

WORKERS = 2
MODEL = {"family": "gpt2", "dims": {"layers": 12, "hidden": 1024, "heads": 16, "ffn": 4096, "max_positions": 128}}
SMOKE_MODEL = {"family": "gpt2", "dims": {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512, "max_positions": 128}}


# How the allocator treats freed memory: as jobs run it, and returning it at once (see the module docstring).
ALLOCATORS = {"": {}, "live": {"MALLOC_MMAP_THRESHOLD_": "65536"}}
COLUMNS = {  # result key -> table heading, GiB per worker
    "model_state_bytes": "model states measured",
    "deepspeed_estimate_bytes": "DeepSpeed estimate",
    "paper_bytes": "ZeRO paper",
    "peak_bytes": "peak RSS",
    "peak_above_start_bytes": "peak RSS above process start",
    "live_peak_bytes": "peak in use",
    "live_peak_above_start_bytes": "peak in use above process start",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, ZeRO-0 and ZeRO-3 only")
    args = parser.parse_args()
    configs = {name: OPTIONS[name] for name in ("ZeRO-0", "ZeRO-3")} if args.smoke else OPTIONS
    runs: dict[str, dict] = {name: {} for name in configs}
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for index, (name, deepspeed) in enumerate(configs.items()):
            for allocator, env_vars in ALLOCATORS.items():
                figures = jobs.run(
                    f"memory-{index}-{allocator or 'rss'}",
                    {
                        "model": SMOKE_MODEL if args.smoke else MODEL,
                        "data": {"seq_len": 64},
                        "train": {"max_steps": 3, "micro_batch_size": 1, "log_every": 1},
                        "deepspeed": deepspeed | {"precision": "bf16"},
                        "scaling": {"num_workers": WORKERS, "cpus_per_worker": os.cpu_count() / WORKERS},
                    },
                    env_vars=env_vars,
                )
                prefix = f"{allocator}_" if allocator else ""
                start, peak = figures.last["memory/at_start_bytes"], figures.last["memory/peak_bytes"]
                runs[name] |= {f"{prefix}peak_bytes": peak, f"{prefix}peak_above_start_bytes": peak - start}
                runs[name].setdefault("model_state_bytes", figures.last["memory/model_state_bytes"])
        size = model_size(JobConfig.model_validate(jobs.job("memory-0-rss")))
    for name, run in runs.items():
        run["deepspeed_estimate_bytes"], _ = deepspeed_estimate(configs[name], size, WORKERS)
        run["paper_bytes"] = paper_bytes(configs[name]["zero_stage"], size.parameters, WORKERS)
    ratios = {key: runs["ZeRO-3"][key] / runs["ZeRO-0"][key] for key in COLUMNS}
    results = {
        "machine": f"{os.cpu_count()} CPU cores, {WORKERS} workers, bf16",
        "parameters": size.parameters,
        "largest_layer_parameters": size.largest_layer,
        "runs": runs,
        "zero3_over_zero0": ratios,
    }
    gib = 2**30
    table = [
        f"{size.parameters / 1e6:.0f}M parameters, {results['machine']}; GiB per worker.",
        "",
        "| config | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, run in runs.items():
        table.append(f"| {name} | " + " | ".join(f"{run[key] / gib:.2f}" for key in COLUMNS) + " |")
    table.append("| ZeRO-3 / ZeRO-0 | " + " | ".join(f"{ratios[key]:.2f}" for key in COLUMNS) + " |")
    write_results("zero_memory", results, table)


if __name__ == "__main__":
    main()
