"""ZeRO memory: per-worker peak memory and model-state bytes for ZeRO stages 0-3 (and CPU offload) with 2 workers,
on a GPT-2 of 150M+ parameters in bf16 mixed precision, next to what DeepSpeed's estimators and the ZeRO paper
(Rajbhandari et al. 2020, section 5: 2 + 2 + 12 bytes per parameter with Adam) predict per worker.

Measured by rank 0 of each run: `memory/model_state_bytes` (the distinct tensor storages held by the engine's module
and optimizer, at the second step's gradient reduction) and `memory/peak_bytes` (the process's peak resident set on
CPU, peak allocated memory on GPU), also shown above the worker process's own start (`memory/at_start_bytes`: Python,
torch, Ray, DeepSpeed). On a CPU machine "offload" moves states to the same memory, so it saves nothing there.

    python -m benchmarks.zero_memory [--smoke]
"""

import argparse
import os
import tempfile
from pathlib import Path

import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from benchmarks.common import Jobs, corpus_files, local_cluster, write_results
from orchestrator.config.job import JobConfig
from orchestrator.config.load import resolve_data_files
from orchestrator.data import cache
from orchestrator.data.tokenizers import from_json
from orchestrator.models.build import build_model

WORKERS = 2
MODEL = {"family": "gpt2", "dims": {"layers": 12, "hidden": 1024, "heads": 16, "ffn": 4096, "max_positions": 128}}
SMOKE_MODEL = {"family": "gpt2", "dims": {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512, "max_positions": 128}}
CONFIGS = {
    "ZeRO-0": {"zero_stage": 0},
    "ZeRO-1": {"zero_stage": 1},
    "ZeRO-2": {"zero_stage": 2},
    "ZeRO-3": {"zero_stage": 3},
    "ZeRO-2 + offload optimizer": {"zero_stage": 2, "offload_optimizer": True},
    "ZeRO-3 + offload optimizer and params": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
}


def paper_bytes(stage: int, params: int, workers: int) -> float:
    """ZeRO paper, mixed-precision Adam: 2 (bf16 weights) + 2 (bf16 gradients) + 12 (fp32 weights, momentum,
    variance) bytes per parameter, each term divided among workers from the stage that partitions it on."""
    weights, grads, optimizer = 2 * params, 2 * params, 12 * params
    divided = {0: (), 1: ("optimizer",), 2: ("optimizer", "grads"), 3: ("optimizer", "grads", "weights")}[stage]
    terms = {"weights": weights, "grads": grads, "optimizer": optimizer}
    return sum(value / workers if name in divided else value for name, value in terms.items())


def deepspeed_estimate(config: dict, params: int, largest_layer: int) -> int:
    """DeepSpeed's own estimate of one worker's device memory for model states (stages 1 and 2 share one)."""
    offload = config.get("offload_optimizer", False)
    if config["zero_stage"] == 3:
        _, device, _ = estimate_zero3_model_states_mem_needs(
            params, largest_layer, num_gpus_per_node=WORKERS, cpu_offload=offload,
            cpu_offload_params=config.get("offload_params", False),
        )
    elif config["zero_stage"] == 0:  # no partitioning: the stage-2 formula on one device
        _, device = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=1, cpu_offload=False)
    else:
        _, device = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=WORKERS, cpu_offload=offload)
    return device


def model_size(job: JobConfig) -> tuple[int, int]:
    """Parameters, and those of the largest single module (what ZeRO-3 gathers at once), on the meta device."""
    entry = cache.entry_dir(job, cache.fingerprint(job, resolve_data_files(job)))
    with torch.device("meta"):
        model = build_model(job.model, job.task, from_json((entry / "tokenizer.json").read_text()), [], 0)
    params = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in module.parameters(recurse=False)) for module in model.modules())
    return params, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, ZeRO-0 and ZeRO-3 only")
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in ("ZeRO-0", "ZeRO-3")} if args.smoke else CONFIGS
    runs, gib = {}, 2**30
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for name, deepspeed in configs.items():
            figures = jobs.run(f"memory-{name.split()[0]}-{len(runs)}", {
                "model": SMOKE_MODEL if args.smoke else MODEL,
                "data": {"seq_len": 64},
                "train": {"max_steps": 3, "micro_batch_size": 1, "log_every": 1},
                "deepspeed": deepspeed | {"precision": "bf16"},
                "scaling": {"num_workers": WORKERS, "cpus_per_worker": os.cpu_count() / WORKERS},
            })
            runs[name] = {key: figures.last[f"memory/{key}"] for key in ("model_state_bytes", "peak_bytes", "at_start_bytes")}
        params, largest = model_size(JobConfig.model_validate(jobs.job("memory-ZeRO-0-0")))
    for name, run in runs.items():
        config = configs[name]
        run["peak_above_start_bytes"] = run["peak_bytes"] - run["at_start_bytes"]
        run["deepspeed_estimate_bytes"] = deepspeed_estimate(config, params, largest)
        run["paper_bytes"] = paper_bytes(config["zero_stage"], params, WORKERS)
    base, stage3 = runs["ZeRO-0"], runs["ZeRO-3"]
    results = {
        "machine": f"{os.cpu_count()} CPU cores, {WORKERS} workers, bf16",
        "parameters": params,
        "largest_layer_parameters": largest,
        "runs": runs,
        "zero3_over_zero0_peak": stage3["peak_bytes"] / base["peak_bytes"],
        "zero3_over_zero0_peak_above_start": stage3["peak_above_start_bytes"] / base["peak_above_start_bytes"],
        "zero3_over_zero0_model_states": stage3["model_state_bytes"] / base["model_state_bytes"],
    }
    table = [
        f"{params / 1e6:.0f}M parameters, {results['machine']}; GiB per worker.",
        "",
        "| config | model states measured | DeepSpeed estimate | ZeRO paper | peak | peak above process start |",
        "|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        cells = [run[key] / gib for key in ("model_state_bytes", "deepspeed_estimate_bytes", "paper_bytes", "peak_bytes", "peak_above_start_bytes")]
        table.append(f"| {name} | " + " | ".join(f"{value:.2f}" for value in cells) + " |")
    table += [
        "",
        f"ZeRO-3 / ZeRO-0 per worker: peak {results['zero3_over_zero0_peak']:.2f}, peak above process start "
        f"{results['zero3_over_zero0_peak_above_start']:.2f}, model states {results['zero3_over_zero0_model_states']:.2f}",
    ]
    write_results("zero_memory", results, table)


if __name__ == "__main__":
    main()
