"""Model parallelism against data parallelism, 2 workers each: for the same seed and global batch, how far the losses
of 20 steps of a pipeline-parallel GPT-2 (2 stages) and a tensor-parallel Llama (AutoTP, 2 ranks) are from those of
2 data-parallel workers, and what one worker holds: the largest share of the model's parameters (all-gathered over
the workers), rank 0's model states (parameters, gradients, fp32 master weights and Adam states, ZeRO-1) and its peak
resident memory, next to what `orchestrator plan` predicts for the share.

Dropout is off (each layout draws its random numbers on other ranks). fp32, so the differences are those of
summation order in the reductions.

    python -m benchmarks.model_parallel [--smoke]
"""

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.common import Jobs, corpus_files, local_cluster, write_results
from orchestrator.config.job import JobConfig
from orchestrator.train.plan import model_size

WORKERS = 2
MODELS = {  # layout -> the model it splits (AutoTP refuses GPT-2; models/pipeline.py cuts GPT-2)
    "pipeline": {"family": "gpt2", "dims": {"layers": 8, "hidden": 512, "heads": 8, "ffn": 2048, "max_positions": 128}},
    "tensor": {"family": "llama", "dims": {"layers": 8, "hidden": 512, "heads": 8, "kv_heads": 4, "ffn": 1376, "max_positions": 128}},
}
# Small, but shaped like the full models: layers, not the embedding (whole on each pipeline end, unsplit by AutoTP),
# hold most parameters, so splitting the layers saves model-state memory here too.
SMOKE_DIMS = {"layers": 8, "hidden": 128, "heads": 4, "ffn": 512, "max_positions": 128}
SMOKE_VOCABULARY = 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny model, 4 steps")
    args = parser.parse_args()
    steps = 4 if args.smoke else 20
    results: dict[str, dict] = {}
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for kind, model in MODELS.items():
            model = model | {"dropout": 0.0} | ({"dims": model["dims"] | SMOKE_DIMS} if args.smoke else {})
            common = {
                "model": model,
                "data": {"seq_len": 128} | ({"tokenizer": {"train": "bpe", "vocab_size": SMOKE_VOCABULARY}} if args.smoke else {}),
                "train": {"max_steps": steps, "log_every": 1, "schedule": {"name": "constant"}},
                "deepspeed": {"zero_stage": 1},
                "scaling": {"num_workers": WORKERS, "cpus_per_worker": os.cpu_count() / WORKERS},
            }
            # 2 replicas x micro batch 8, against 1 replica accumulating 2 micro batches of 8: one global batch of 16
            data = jobs.run(f"{kind}-data-parallel", common | {"train": common["train"] | {"micro_batch_size": 8}})
            split = jobs.run(
                f"{kind}-parallel",
                common
                | {
                    "train": common["train"] | {"micro_batch_size": 8, "grad_accum_steps": 2},
                    "parallelism": {kind: WORKERS},
                },
            )
            reference, losses = data.history("train/loss"), split.history("train/loss")
            size = model_size(JobConfig.model_validate(jobs.job(f"{kind}-parallel")))
            results[kind] = {
                "family": model["family"],
                "parameters": size.parameters,
                "max_abs_loss_difference": max(abs(a - b) for a, b in zip(losses, reference)),
                "max_rel_loss_difference": max(abs(a - b) / abs(b) for a, b in zip(losses, reference)),
                "final_loss": losses[-1],
                "parameter_share": split.last["memory/parameter_share"],
                "planned_parameter_share": size.worker_parameters / size.parameters,
                "model_state_bytes": split.last["memory/model_state_bytes"],
                "data_parallel_model_state_bytes": data.last["memory/model_state_bytes"],
                "peak_bytes": split.last["memory/peak_bytes"],
                "data_parallel_peak_bytes": data.last["memory/peak_bytes"],
                "tokens_per_s": split.steady("train/tokens_per_s"),
                "data_parallel_tokens_per_s": data.steady("train/tokens_per_s"),
            }
    mib = 2**20
    table = [
        f"{WORKERS} workers, fp32, ZeRO-1, {steps} steps, global batch 16 x 128 tokens; rank 0's memory, MiB.",
        "",
        "| layout | model | max loss difference (rel.) | parameters per worker: measured (plan) | model states vs data parallel | peak RSS vs data parallel | tokens/s vs data parallel |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, run in results.items():
        table.append(
            f"| {kind} x{WORKERS} | {run['family']} {run['parameters'] / 1e6:.1f}M "
            f"| {run['max_abs_loss_difference']:.1e} ({run['max_rel_loss_difference']:.1e}) "
            f"| {run['parameter_share']:.1%} ({run['planned_parameter_share']:.1%}) "
            f"| {run['model_state_bytes'] / mib:.0f} vs {run['data_parallel_model_state_bytes'] / mib:.0f} "
            f"| {run['peak_bytes'] / mib:.0f} vs {run['data_parallel_peak_bytes'] / mib:.0f} "
            f"| {run['tokens_per_s']:,.0f} vs {run['data_parallel_tokens_per_s']:,.0f} |"
        )
    write_results("model_parallel", results, table)


if __name__ == "__main__":
    main()
