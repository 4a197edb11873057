"""Model FLOPs utilisation: tokens/s, achieved FLOP/s and MFU of GPT-2 small (12 x 768) and medium (24 x 1024)
shapes in bf16 with ZeRO-2, one worker per GPU, read from the runs' `perf/*` metrics (orchestrator/train/flops.py).
MFU needs an accelerator in the peak table (A100, H100, H200); without a GPU on this machine it runs a small
model on CPU and reports achieved FLOP/s only, and says the GPU mode was not run.

    python -m benchmarks.mfu [--smoke]
"""

import argparse
import os
import tempfile
from pathlib import Path

import torch

from benchmarks.common import Jobs, corpus_files, local_cluster, write_results

GPU_MODELS = {
    "gpt2-small shape": {"model": {"family": "gpt2", "size": "small"}, "data": {"seq_len": 1024}, "train": {"micro_batch_size": 8}},
    "gpt2-medium shape": {"model": {"family": "gpt2", "size": "medium"}, "data": {"seq_len": 1024}, "train": {"micro_batch_size": 4}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few files: checks that it works")
    args = parser.parse_args()
    steps = 10 if args.smoke else 100
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        gpus = torch.cuda.device_count()  # of this machine, where the local cluster runs
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        if gpus:
            runs = {name: job | {"scaling": {"num_workers": gpus, "use_gpu": True, "cpus_per_worker": 1}} for name, job in GPU_MODELS.items()}
            device = f"{gpus} GPU(s)"
        else:
            runs = {"cpu (benchmark base model)": {"scaling": {"num_workers": 1, "cpus_per_worker": os.cpu_count()}}}
            device = f"{os.cpu_count()} CPU cores; GPU mode not run (no GPU on this machine)"
        results: dict = {"device": device, "runs": {}}
        for name, overrides in runs.items():
            overrides = overrides | {"deepspeed": {"zero_stage": 2, "precision": "bf16"}}
            overrides["train"] = overrides.get("train", {}) | {"max_steps": steps}
            figures = jobs.run(f"mfu-{len(results['runs'])}", overrides)
            run = {
                "model_flops_per_token": figures.last["perf/model_flops_per_token"],
                "tokens_per_s": figures.steady("train/tokens_per_s"),
                "achieved_tflops": figures.steady("perf/flops_per_s") / 1e12,
            }
            if "perf/mfu" in figures.last:
                run["mfu"] = figures.steady("perf/mfu")
            results["runs"][name] = run
    table = [f"Device: {device}.", "", "| model | FLOPs/token | tokens/s | achieved TFLOP/s | MFU |", "|---|---|---|---|---|"]
    for name, run in results["runs"].items():
        mfu = f"{100 * run['mfu']:.1f}%" if "mfu" in run else "n/a (no peak for this device)"
        table.append(f"| {name} | {run['model_flops_per_token'] / 1e6:.0f}M | {run['tokens_per_s']:,.0f} | {run['achieved_tflops']:.3f} | {mfu} |")
    write_results("mfu", results, table)


if __name__ == "__main__":
    main()
