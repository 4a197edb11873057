"""Framework overhead: steady-state training tokens/s of an orchestrator job (Ray Data -> Ray Train -> DeepSpeed
ZeRO-0, one worker) against a bare PyTorch loop doing the same training by hand, in one run.

Same model (built by the same function, same seed), same token sequences (the job's prepared split, held in memory
here), same batch, AdamW with the same settings, the same gradient clipping, and the same number of threads as the
job's worker has CPUs. Both are measured the same way: tokens/s over windows of `log_every` steps, the median
of all windows but the first. Each is run `--rounds` times, alternating (job, bare, job, bare...), and averaged. The job's run also gives model FLOPs per token and achieved FLOP/s.

    python -m benchmarks.overhead [--smoke]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Jobs, corpus_files, local_cluster, prepared_entry, write_results
from orchestrator.config.job import JobConfig
from orchestrator.data.shards import Split
from orchestrator.data.tokenizers import from_json
from orchestrator.models.build import build_model
from orchestrator.train.optimizers import optimizer_section


def torch_optimizer_arguments(job: JobConfig) -> dict:
    """The AdamW arguments the job gives DeepSpeed (learning rate, betas, eps, weight decay, fused kernel), less the
    two that only DeepSpeed reads."""
    params = optimizer_section(job.train.optimizer)["params"]
    return {key: value for key, value in params.items() if key not in ("torch_adam", "adam_w_mode")}


def bare_pytorch(job: JobConfig, steps: int) -> list[float]:
    """tokens/s of each window of log_every steps of a hand-written loop over the job's prepared sequences."""
    torch.set_num_threads(int(job.scaling.cpus_per_worker))
    entry = prepared_entry(job)
    train = Split(entry / "train")
    sequences = torch.from_numpy(train.take(np.arange(len(train)))["input_ids"]).long()
    model = build_model(job.model, job.task, from_json((entry / "tokenizer.json").read_text()), [], job.train.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **torch_optimizer_arguments(job))
    batch, tokens_per_step = job.train.micro_batch_size, job.train.micro_batch_size * job.data.seq_len
    windows, started = [], time.perf_counter()
    for step in range(1, steps + 1):
        start = (step * batch) % (len(sequences) - batch)
        input_ids = sequences[start : start + batch]
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), job.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % job.train.log_every == 0:
            windows.append(job.train.log_every * tokens_per_step / (time.perf_counter() - started))
            started = time.perf_counter()
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few steps on a few files: checks that it works")
    parser.add_argument("--rounds", type=int, default=2, help="job and loop runs each, alternating (smoke: 1)")
    args = parser.parse_args()
    steps, rounds = (20, 1) if args.smoke else (150, args.rounds)
    runs, bare_runs = [], []
    with local_cluster() as env, tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(Path(directory), env, corpus_files(args.smoke))
        for index in range(rounds):  # alternating, so that the machine's drift counts against neither
            runs.append(jobs.run(f"overhead-orchestrator-{index}", {"train": {"max_steps": steps}}))
            job = JobConfig.model_validate(jobs.job(f"overhead-orchestrator-{index}"))
            bare_runs.append(statistics.median(bare_pytorch(job, steps)[1:]))
    figures = runs[0]
    orchestrator_runs = [run.steady("train/tokens_per_s") for run in runs]
    bare, orchestrator = statistics.mean(bare_runs), statistics.mean(orchestrator_runs)
    results = {
        "machine": f"{os.cpu_count()} CPU cores, {job.scaling.cpus_per_worker:g} threads",
        "model": job.model.dims_resolved(),
        "steps": steps,
        "tokens_per_step": job.global_batch_size * job.data.seq_len,
        "bare_pytorch_tokens_per_s": bare,
        "bare_pytorch_runs_tokens_per_s": bare_runs,
        "orchestrator_tokens_per_s": orchestrator,
        "orchestrator_runs_tokens_per_s": orchestrator_runs,
        "ratio": orchestrator / bare,
        "model_flops_per_token": figures.last["perf/model_flops_per_token"],
        "orchestrator_flops_per_s": figures.steady("perf/flops_per_s"),
        "data_wait_fraction": figures.steady("train/data_wait_fraction"),
    }
    write_results(
        "overhead",
        results,
        [
            "| loop | tokens/s | ratio |",
            "|---|---|---|",
            f"| bare PyTorch (in memory, AdamW, clipping) | {bare:,.0f} | 1.00 |",
            f"| orchestrator (Ray Data, Ray Train, DeepSpeed ZeRO-0, 1 worker) | {orchestrator:,.0f} | {results['ratio']:.3f} |",
            "",
            f"Model FLOPs per token {results['model_flops_per_token']:,.0f}; achieved {results['orchestrator_flops_per_s'] / 1e9:.1f} GFLOP/s"
            f" ({results['machine']}); data wait {100 * results['data_wait_fraction']:.2f}% of step time.",
        ],
    )


if __name__ == "__main__":
    main()
