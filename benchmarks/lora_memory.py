"""LoRA against full fine-tuning: the share of parameters that train, a worker's memory and tokens/s, next to what
`orchestrator plan` counts.

A GPT-2 small (12 layers x 768, 124M parameters; random-init, saved as a pretrained model directory with a tokenizer
trained on the benchmark corpus) is fine-tuned by one worker for a few steps, all of its weights, then LoRA adapters
(r 8 on every linear layer). Peak memory is rank 0's `memory/peak_bytes` above its process's start, with glibc's
retention of freed memory off (as in benchmarks/zero_memory.py); model states are `memory/model_state_bytes`.

    python -m benchmarks.lora_memory [--smoke]
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

from benchmarks.activation_memory import RETURN_FREED_MEMORY
from benchmarks.common import Jobs, corpus_files, local_cluster, write_results
from orchestrator.config.job import JobConfig, ModelConfig, TokenizerConfig
from orchestrator.data.tokenizers import train_tokenizer
from orchestrator.models.build import build_model
from orchestrator.train.plan import model_size, option_plan

LORA = {"r": 8, "alpha": 16, "target_modules": "all-linear"}


def pretrained_model(directory: Path, files: list[str], size: str) -> Path:
    """A random-init GPT-2 of the size and a BPE tokenizer trained on the first lines of the corpus, saved."""
    texts = [json.loads(line)["text"] for line in Path(files[0]).read_text().splitlines()[:20_000]]
    tokenizer = train_tokenizer(TokenizerConfig(vocab_size=8192), texts)
    build_model(ModelConfig(family="gpt2", size=size), "causal_lm", tokenizer, [], seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 steps of GPT-2 tiny on a few files: checks that it works")
    args = parser.parse_args()
    runs = {}
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        files = corpus_files(args.smoke)
        jobs = Jobs(Path(directory), env, files)
        jobs.base["model"], jobs.base["data"]["tokenizer"] = {}, {}  # a pretrained model, with its own tokenizer
        start = pretrained_model(Path(directory) / "pretrained", files, "tiny" if args.smoke else "small")
        for name, lora in (("full", None), ("lora", LORA)):
            settings = {
                "model": {"pretrained": str(start), "lora": lora},
                "data": {"seq_len": 128},
                "train": {"max_steps": 2 if args.smoke else 8, "log_every": 1 if args.smoke else 2, "micro_batch_size": 4},
                "deepspeed": {"zero_stage": 0},
                "scaling": {"num_workers": 1, "cpus_per_worker": os.cpu_count()},
            }
            figures = jobs.run(f"finetune-{name}", settings, env_vars=RETURN_FREED_MEMORY)
            job = JobConfig.model_validate(jobs.job(f"finetune-{name}"))
            size = model_size(job)
            runs[name] = {
                "parameters": size.parameters,
                "trainable_share": figures.last["model/trainable_share"],
                "plan_trainable_share": (size.trainable or size.parameters) / size.parameters,
                "model_state_bytes": figures.last["memory/model_state_bytes"],
                "peak_above_start_bytes": figures.last["memory/peak_bytes"] - figures.last["memory/at_start_bytes"],
                "plan_paper_bytes": option_plan(job, {"zero_stage": 0}, size, float("inf")).paper_bytes,
                "tokens_per_s": figures.steady("train/tokens_per_s"),
            }
    full, lora = runs["full"], runs["lora"]
    results = {
        "machine": f"{os.cpu_count()} CPU cores, 1 worker, fp32, ZeRO-0",
        "runs": runs,
        "peak_ratio": lora["peak_above_start_bytes"] / full["peak_above_start_bytes"],
        "model_state_ratio": lora["model_state_bytes"] / full["model_state_bytes"],
        "tokens_per_s_ratio": lora["tokens_per_s"] / full["tokens_per_s"],
    }
    mib = 2**20
    table = [
        f"GPT-2 {'tiny' if args.smoke else 'small'} ({full['parameters'] / 1e6:,.1f}M parameters), seq_len 128, micro batch 4; {results['machine']}.",
        "",
        "| fine-tuning | trainable share (plan) | model states | plan's model states | peak memory above process start | tokens/s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {run['trainable_share']:.2%} ({run['plan_trainable_share']:.2%}) | {run['model_state_bytes'] / mib:,.0f} MiB | "
            f"{run['plan_paper_bytes'] / mib:,.0f} MiB | {run['peak_above_start_bytes'] / mib:,.0f} MiB | {run['tokens_per_s']:,.0f} |"
            for name, run in runs.items()
        ),
        f"| LoRA / full | | {results['model_state_ratio']:.2f}x | | {results['peak_ratio']:.2f}x | {results['tokens_per_s_ratio']:.2f}x |",
    ]
    write_results("lora_memory", results, table)


if __name__ == "__main__":
    main()
