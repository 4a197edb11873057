"""What the benchmarks share: a warm local Ray cluster, jobs run through the real CLI (a driver on the cluster, or
`ray job submit`), their figures read back from MLflow, and results written as JSON and a markdown table.

A benchmark uses the cluster named by RAY_ADDRESS (GCS) and RAY_API_SERVER_ADDRESS (job API) when both are set,
else starts its own head on free loopback ports and stops it at the end.
"""

import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

from benchmarks import caller_names_a_cluster
from orchestrator.cli.cluster import start_ray
from orchestrator.config.job import JobConfig
from orchestrator.data import cache
from orchestrator.data.read import resolve_data_files
from orchestrator.local_node import LOOPBACK_NODE
from orchestrator.models.families import FAMILIES
from orchestrator.train.deepspeed_config import deep_merge
from orchestrator.train.local import free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("BENCHMARK_RESULTS", REPO / "benchmarks" / "results"))
BIN = Path(sys.executable).parent
CORPUS = Path.home() / ".cache/orchestrator/data/fortunes"

# One GPT-2 language-modelling job on the fortunes corpus; each benchmark changes what it measures.
BASE_JOB = {
    "model": {"family": "gpt2", "dims": {"layers": 4, "hidden": 256, "heads": 4, "ffn": 1024, "max_positions": 128}},
    "data": {
        "paths": [str(CORPUS / "*.jsonl")],
        "tokenizer": {"train": "bpe", "vocab_size": 4096},
        "seq_len": 128,
        "val_fraction": 0.0,
    },
    "train": {
        "max_steps": 100,
        "micro_batch_size": 8,
        "optimizer": {"name": "adamw", "lr": 3.0e-4, "weight_decay": 0.01},
        "eval_every": None,
        "log_every": 10,
    },
    "deepspeed": {"zero_stage": 0, "precision": "fp32"},
    "scaling": {"num_workers": 1, "cpus_per_worker": os.cpu_count()},
    "checkpoint": {"every_steps": None, "max_failures": 0},
}

# jobs/gpt-tiny.yaml's ZeRO stage and workers, and with its model too (the dims in full: they replace the base's)
GPT_TINY_LAYOUT = {"deepspeed": {"zero_stage": 2}, "scaling": {"num_workers": 2, "cpus_per_worker": os.cpu_count() / 2}}
GPT_TINY = GPT_TINY_LAYOUT | {"model": {"family": "gpt2", "size": "tiny", "dims": FAMILIES["gpt2"].presets["tiny"]}}


@contextlib.contextmanager
def local_cluster(object_store_memory: int | None = None, num_cpus: int | None = None):
    """The environment of a client of a warm local Ray cluster (this process's too): the caller's, or one started
    here (with an object store of `object_store_memory` bytes and `num_cpus` CPUs, else Ray's defaults) and stopped
    on the way out."""
    if caller_names_a_cluster():
        yield dict(os.environ)
        return
    env = os.environ | LOOPBACK_NODE | {"RAY_AUTH_MODE": "token", "PATH": f"{BIN}:{os.environ['PATH']}"}
    if subprocess.run(["ray", "status"], env=env, capture_output=True).returncode == 0:
        sys.exit("a Ray cluster is already running: stop it, or name it with RAY_ADDRESS and RAY_API_SERVER_ADDRESS")
    port, dashboard = free_port(), free_port()
    started = start_ray(env, port, dashboard, num_cpus=num_cpus, object_store_memory=object_store_memory)  # on loopback
    try:
        if started.returncode:
            sys.exit(started.stdout + started.stderr)
        cluster = {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard}"}
        cluster |= {name: env[name] for name in ("RAY_AUTH_MODE", *LOOPBACK_NODE)}
        os.environ.update(cluster)  # ray.init() in this process joins it too
        yield env | cluster
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True)


class Jobs:
    """Runs benchmark jobs in `directory` (job files, data cache, checkpoints and an MLflow sqlite store)."""

    def __init__(self, directory: Path, env: dict, files: list[str] | None = None):
        self.directory, self.env = directory, env
        self.tracking_uri = f"sqlite:///{directory}/mlflow.db"
        self.client = MlflowClient(self.tracking_uri)
        self.base = copy.deepcopy(BASE_JOB)
        if files:
            self.base["data"]["paths"] = files
        self.base["data"]["cache_dir"] = str(directory / "data-cache")
        self.base["checkpoint"]["dir"] = str(directory / "runs")
        self.base["tracking"] = {"uri": self.tracking_uri, "experiment": "benchmarks"}

    def job(self, name: str) -> dict:
        return yaml.safe_load((self.directory / f"{name}.yaml").read_text())

    def run(self, name: str, overrides: dict, submit: bool = False, env_vars: dict | None = None) -> "RunFigures":
        """One job to its end, as a driver on the cluster or through `ray job submit` (with `env_vars` in its
        runtime environment, which its workers inherit); its MLflow run's figures."""
        job = deep_merge(self.base, overrides)
        job["tracking"]["run_name"] = name
        path = self.directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job, sort_keys=False))
        command = [sys.executable, "-m", "orchestrator", "train", str(path)]
        if submit or env_vars:
            runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
            command = ["ray", "job", "submit", "--address", self.env["RAY_API_SERVER_ADDRESS"], *runtime_env, "--", "python", *command[1:]]
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, cwd=REPO)
        if done.returncode:
            sys.exit(f"job {name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        [run] = self.client.search_runs([self.client.get_experiment_by_name("benchmarks").experiment_id], f"tags.mlflow.runName = '{name}'")
        return RunFigures(self.client, run)


class RunFigures:
    def __init__(self, client: MlflowClient, run):
        self.client, self.run, self.last = client, run, run.data.metrics

    def history(self, name: str) -> list[float]:
        return [m.value for m in sorted(self.client.get_metric_history(self.run.info.run_id, name), key=lambda m: m.step)]

    def steady(self, name: str) -> float:
        """The median over logging windows after the first (warm-up: first batches, allocator growth); a run with one
        window (smoke) has only that one."""
        values = self.history(name)
        return statistics.median(values[1:] or values)

    def startup(self) -> dict[str, float]:
        return {key.split("/")[-1][: -len("_s")]: value for key, value in self.last.items() if key.startswith("time/startup/")}


def data_wait(jobs: Jobs, steps: int, data: dict | None = None) -> dict:
    """The benchmarks' GPT-2 (4x256) with jobs/gpt-tiny.yaml's ZeRO-2 and 2 workers (`data`: its data section, the
    benchmark's by default): its workers' data wait, from MLflow."""
    overrides = GPT_TINY_LAYOUT | {"train": {"max_steps": steps, "eval_batches": 1}}  # the evaluation at the end: one batch, whatever the split
    fractions = jobs.run("data-wait", {**overrides, "data": data} if data else overrides).history("train/data_wait_fraction")
    return {"steps": steps, "mean_data_wait_fraction": statistics.fmean(fractions), "max_data_wait_fraction": max(fractions)}


def prepared_entry(job: JobConfig) -> Path:
    """The data cache entry the job prepared (or a cache hit found)."""
    return cache.entry_dir(job, cache.fingerprint(job, resolve_data_files(job)))


def write_results(name: str, figures: dict, table: list[str]) -> None:
    """benchmarks/results/<name>.json and .md, and the table on stdout."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(table) + "\n")
    print("\n".join(table), flush=True)


def corpus_files(smoke: bool) -> list[str]:
    files = sorted(str(path) for path in CORPUS.glob("*.jsonl"))
    if not files:
        sys.exit(f"no corpus in {CORPUS}: run bash cluster/install.sh")
    return files[:4] if smoke else files


def clean_directory(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
