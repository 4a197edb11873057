"""Data at scale: how preparation and a cache hit grow with the corpus.

A deterministic synthetic corpus (a seeded word-level Markov chain over Debian's fortunes: their words, their word
pairs, their document lengths and categories) is written at each size, then prepared by `orchestrator prepare` on a
local cluster whose object store is smaller than the largest corpus. For each size:
- preparation (a cache miss): seconds, tokens/s, the machine's busy cores, the driver's peak RSS and private memory,
  and the object store's peak use;
- a cache hit: the time `prepare` takes to load the entry (its own figure) and the whole command's;
- the feed, in this process, on the prepared training split: the rows each worker reads in one epoch with 1, 2 and
  4 workers (as a share of the split), and the time a resumed epoch takes to its first batch at step 10 and at its
  last step;
- training: 100 steps of the benchmarks' GPT-2 (4x256) with 2 workers and ZeRO-2 on the prepared entry, and the share of step time its
  workers wait for data (from MLflow).

    python -m benchmarks.data_scale                          # 100, 400 and 1,600 MB: about an hour on 2 cores
    python -m benchmarks.data_scale --sizes-mb 10 40         # a first look
    python -m benchmarks.data_scale --smoke                  # 2 MB: checks that it works
"""

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil
import yaml
from ray._private.internal_api import get_memory_info_reply, get_state_from_address

from benchmarks.common import BIN, REPO, Jobs, corpus_files, data_wait, local_cluster, write_results
from orchestrator.data.feed import step_batches
from orchestrator.data.shards import Split

SYNTHETIC = Path.home() / ".cache" / "orchestrator" / "data" / "synthetic"
FILE_BYTES = 32 * 2**20  # the corpus comes in files of this size: the reader's unit of parallelism
OBJECT_STORE_BYTES = 512 * 2**20
GLOBAL_BATCH = 64  # sequences per step in the feed figures, shared by 1, 2 or 4 workers
TRAIN_STEPS = 100  # of the training run that measures the workers' data wait
SEED = 0


def fortunes() -> list[dict]:
    return [json.loads(line) for path in corpus_files(smoke=False) for line in Path(path).read_text().splitlines() if line.strip()]


class MarkovCorpus:
    """Order-2 word chain over the fortunes: each document takes the length and category of a real fortune and starts
    at its first two words."""

    def __init__(self, rows: list[dict]):
        self.next_words: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.starts: list[tuple[tuple[str, str], int, str]] = []
        for row in rows:
            words = row["text"].split()
            if len(words) < 3:
                continue
            self.starts.append(((words[0], words[1]), len(words), row["category"]))
            for first, second, third in zip(words, words[1:], words[2:]):
                self.next_words[(first, second)].append(third)

    def document(self, rng: random.Random) -> dict:
        state, length, category = rng.choice(self.starts)
        words = list(state)
        while len(words) < length:
            followers = self.next_words.get(state)
            if not followers:  # a fortune's last word pair: start again from another fortune
                state = rng.choice(self.starts)[0]
                words += state
                continue
            word = rng.choice(followers)
            words.append(word)
            state = (state[1], word)
        return {"text": " ".join(words), "category": category}

    def write_file(self, path: Path, index: int, size: int) -> None:
        """File `index` of a corpus: the same bytes on every machine for the same seed, index and size."""
        rng = random.Random(f"{SEED}-{index}")
        written = 0
        with path.open("w") as out:
            while written < size:
                line = json.dumps(self.document(rng)) + "\n"
                out.write(line)
                written += len(line.encode())


def synthetic_corpus(megabytes: float) -> list[str]:
    """The corpus of `megabytes`, written once under ~/.cache (a file of it is whole once renamed into place)."""
    directory = SYNTHETIC / f"seed{SEED}-{megabytes:g}MB"
    total = int(megabytes * 2**20)
    sizes = [min(FILE_BYTES, total - start) for start in range(0, total, FILE_BYTES)]
    paths = [directory / f"{index:05d}.jsonl" for index in range(len(sizes))]
    if not all(path.is_file() for path in paths):
        directory.mkdir(parents=True, exist_ok=True)
        corpus = MarkovCorpus(fortunes())
        for index, (path, size) in enumerate(zip(paths, sizes)):
            if not path.is_file():
                partial = path.with_suffix(".partial")
                corpus.write_file(partial, index, size)
                partial.rename(path)
    return [str(path) for path in paths]


def data_section(directory: Path, files: list[str]) -> dict:
    """jobs/gpt-tiny.yaml's data section (every cleaning stage of a pretraining job) over `files`."""
    data = yaml.safe_load((REPO / "jobs" / "gpt-tiny.yaml").read_text())["data"]
    return {**data, "paths": files, "cache_dir": str(directory / "data-cache")}


def job_file(directory: Path, name: str, files: list[str]) -> Path:
    job = yaml.safe_load((REPO / "jobs" / "gpt-tiny.yaml").read_text())
    job["data"] = data_section(directory, files)
    job["tracking"] = {"uri": f"sqlite:///{directory}/mlflow.db", "experiment": "data-scale"}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


class Peaks(threading.Thread):
    """Samples a process's memory, the machine's busy cores and the object-store use of the cluster at `address`
    every `interval` seconds until stopped. The process's RSS counts the object-store pages it maps (shared memory,
    the store's and bounded by it); its private memory (RssAnon: RSS less shared pages) is what it holds itself."""

    def __init__(self, pid: int, address: str, interval: float = 0.5):
        super().__init__(daemon=True)
        self.process, self.interval = psutil.Process(pid), interval
        self.rss = self.private = self.object_store = 0
        self.busy_cores: list[float] = []
        self.state = get_state_from_address(address)
        self.stopped = threading.Event()

    def run(self) -> None:
        psutil.cpu_percent()  # starts the first interval
        while not self.stopped.wait(self.interval):
            try:
                memory = self.process.memory_info()
            except psutil.NoSuchProcess:
                return
            self.rss = max(self.rss, memory.rss)
            self.private = max(self.private, memory.rss - memory.shared)  # RssAnon: less the mapped files and store
            self.busy_cores.append(psutil.cpu_percent() / 100 * psutil.cpu_count())
            stats = get_memory_info_reply(self.state).store_stats
            self.object_store = max(self.object_store, stats.object_store_bytes_used)


def prepare(job: Path, env: dict) -> dict:
    """`orchestrator prepare JOB` to its end: its figures and the report's."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [BIN / "python", "-m", "orchestrator", "prepare", str(job)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peaks = Peaks(process.pid, env["RAY_ADDRESS"])
    peaks.start()
    output = process.communicate()[0]
    peaks.stopped.set()
    peaks.join()
    if process.returncode:
        sys.exit(f"prepare {job} failed:\n{output[-4000:]}")
    figures = {
        "command_s": time.perf_counter() - started,
        "driver_peak_rss_mb": peaks.rss / 2**20,
        "driver_peak_private_mb": peaks.private / 2**20,
        "object_store_peak_mb": peaks.object_store / 2**20,
        "mean_busy_cores": sum(peaks.busy_cores) / max(len(peaks.busy_cores), 1),
    }
    if found := re.search(r"loaded in ([\d.]+) s", output):
        figures["loaded_s"] = float(found.group(1))
    if found := re.search(r"([\d,]+) rows read, ([\d,]+) kept", output):
        figures["rows_read"], figures["rows_kept"] = (int(number.replace(",", "")) for number in found.groups())
    return figures


def entry_report(directory: Path) -> dict:
    [meta] = (directory / "data-cache").rglob("meta.json")
    return json.loads(meta.read_text())["report"]


class CountedSplit(Split):
    """A split that counts the rows read from it."""

    taken = 0

    def take(self, positions):
        self.taken += len(positions)
        return super().take(positions)


def feed_figures(directory: Path) -> dict:
    """Rows read per worker per epoch (rank 0, as a share of the split) for 1, 2 and 4 workers, and seconds to the
    first batch of an epoch resumed at step 10 and at its last step."""
    [train] = (directory / "data-cache").rglob("train")
    figures = {}
    for workers in (1, 2, 4):
        split = CountedSplit(train)
        for _ in step_batches(split, rank=0, world_size=workers, micro_batch_size=GLOBAL_BATCH // workers, global_batch_size=GLOBAL_BATCH, seed=0):
            pass
        figures[f"read_share_{workers}_workers"] = split.taken / len(split)
    steps = len(Split(train)) // GLOBAL_BATCH
    for name, step in (("10", 10), ("last", steps - 1)):
        started = time.perf_counter()
        next(step_batches(Split(train), rank=0, world_size=2, micro_batch_size=GLOBAL_BATCH // 2, global_batch_size=GLOBAL_BATCH, seed=0, skip=step))
        figures[f"resume_at_{name}_s"] = time.perf_counter() - started
    figures["steps_per_epoch"] = steps
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 400, 1600])
    parser.add_argument("--smoke", action="store_true", help="one corpus of 2 MB: checks that it works")
    args = parser.parse_args()
    sizes = [2.0] if args.smoke else args.sizes_mb
    rows = []
    with local_cluster(object_store_memory=OBJECT_STORE_BYTES) as env:
        for megabytes in sizes:
            files = synthetic_corpus(megabytes)
            with tempfile.TemporaryDirectory() as directory:
                job = job_file(Path(directory), f"synthetic-{megabytes:g}MB", files)
                miss = prepare(job, env)
                report = entry_report(Path(directory))
                hit = prepare(job, env)
                feed = feed_figures(Path(directory))
                training = data_wait(Jobs(Path(directory), env, files), 20 if args.smoke else TRAIN_STEPS, data_section(Path(directory), files))
                entries = list((Path(directory) / "data-cache").rglob("meta.json"))
                assert len(entries) == 1, f"training prepared the corpus again: {entries}"
            rows.append(
                {
                    "corpus_mb": megabytes,
                    "files": len(files),
                    "rows_read": report["rows_read"],
                    "tokens": report["tokens"],
                    "prepare_s": report["seconds"],
                    "tokens_per_s": report["tokens"] / report["seconds"],
                    "miss": miss,
                    "hit": hit,
                    "feed": feed,
                    "training": training,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        object_store = get_state_from_address(env["RAY_ADDRESS"]).cluster_resources()["object_store_memory"]
    # A cluster the caller names (benchmarks/run_all.py) keeps its own object store size
    results = {"machine": f"{os.cpu_count()} CPU cores", "object_store_mb": object_store / 2**20, "sizes": rows}
    write_results("data_scale", results, markdown(results))


def table_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_head(columns: list[str]) -> list[str]:
    return [table_row(columns), table_row(["---"] * len(columns))]


def markdown(results: dict) -> list[str]:
    table = [
        f"Object store: {results['object_store_mb']:.0f} MB; {results['machine']}.",
        "",
        *table_head(
            ["corpus", "rows", "tokens", "prepare s", "tokens/s", "cores busy", "driver peak RSS", "its private memory", "object store peak"]
            + ["cache hit: load s", "cache hit: command s"]
        ),
    ]
    for row in results["sizes"]:
        miss, hit = row["miss"], row["hit"]
        cells = [f"{row['corpus_mb']:g} MB", f"{row['rows_read']:,}", f"{row['tokens']:,}", f"{row['prepare_s']:.1f}", f"{row['tokens_per_s']:,.0f}"]
        cells += [
            f"{miss['mean_busy_cores']:.2f}",
            *(f"{miss[name]:,.0f} MB" for name in ("driver_peak_rss_mb", "driver_peak_private_mb", "object_store_peak_mb")),
        ]
        table.append(table_row(cells + [f"{hit.get('loaded_s', float('nan')):.2f}", f"{hit['command_s']:.1f}"]))
    table += [
        "",
        "Preparation (a cache miss): the machine's busy cores on average, the driver's peak RSS (which counts the object-store pages it maps) and its private memory (RssAnon).",
        "",
        f"The feed (global batch {GLOBAL_BATCH}): rows rank 0 reads in one epoch, as a share of the training split, and seconds to a resumed epoch's first batch; "
        f"then {results['sizes'][0]['training']['steps']} steps of jobs/gpt-tiny.yaml (2 workers) on the prepared data: the share of step time the workers wait for data.",
        "",
        *table_head(
            ["corpus", "steps per epoch", "1 worker", "2 workers", "4 workers", "resume at step 10", "resume at the last step"]
            + ["training: data wait (worst window)"]
        ),
    ]
    for row in results["sizes"]:
        feed, wait = row["feed"], row["training"]
        shares = [f"{feed[f'read_share_{workers}_workers']:.3f}" for workers in (1, 2, 4)]
        resumes = [f"{feed[f'resume_at_{step}_s'] * 1000:.1f} ms" for step in ("10", "last")]
        data_wait_cell = f"{100 * wait['mean_data_wait_fraction']:.2f}% ({100 * wait['max_data_wait_fraction']:.2f}%)"
        table.append(table_row([f"{row['corpus_mb']:g} MB", f"{feed['steps_per_epoch']:,}", *shares, *resumes, data_wait_cell]))
    return table


if __name__ == "__main__":
    main()
