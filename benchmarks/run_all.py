"""Runs every benchmark, one after the other on one warm local Ray cluster, and gathers their markdown tables
into benchmarks/results/README.md (each also writes its own JSON there).

    python -m benchmarks.run_all            # the figures of docs/benchmarks.md (about 25 minutes on 2 CPU cores)
    python -m benchmarks.run_all --smoke    # each one briefly: checks that they work and what they write
"""

import argparse
import subprocess
import sys

from benchmarks.common import REPO, RESULTS, local_cluster

# benchmarks/data_scale.py runs on its own: its corpus sizes take about an hour, on a cluster with an object store of its size
BENCHMARKS = {
    "overhead": "Framework overhead against bare PyTorch",
    "scaling": "Data-parallel scaling",
    "zero_memory": "ZeRO memory per worker",
    "activation_memory": "Activation checkpointing",
    "lora_memory": "LoRA against full fine-tuning",
    "model_parallel": "Tensor and pipeline parallelism against data parallelism",
    "first_step": "Time to first step",
    "mfu": "Model FLOPs utilisation",
    "data_pipeline": "Data pipeline",
    "sweep_overhead": "Sweep overhead",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="*", choices=list(BENCHMARKS), help="run these benchmarks only")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    with local_cluster() as env:
        for name in names:
            print(f"== {BENCHMARKS[name]} (benchmarks/{name}.py)", flush=True)
            command = [sys.executable, "-m", f"benchmarks.{name}"] + (["--smoke"] if args.smoke else [])
            if subprocess.run(command, env=env, cwd=REPO).returncode:
                sys.exit(f"benchmarks/{name}.py failed")
    sections = [f"## {BENCHMARKS[name]}\n\n{(RESULTS / f'{name}.md').read_text()}" for name in BENCHMARKS if (RESULTS / f"{name}.md").exists()]
    (RESULTS / "README.md").write_text(f"# Benchmark results ({'smoke' if args.smoke else 'full'} mode)\n\n" + "\n".join(sections))
    print(f"results: {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
