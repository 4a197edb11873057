"""The prepared-dataset cache: cleaned, tokenized, packed splits as shards (data/shards.py), with their tokenizer and data report.

An entry is keyed by a fingerprint of everything its content depends on: each input file's path, size and modification
time (rsync's quick check: reading the files would make every job's start-up, cache hits included, grow with the
corpus), the job's data section (less the cache settings), the task, the local tokenizer's files, and
PIPELINE_VERSION (bumped whenever the pipeline's output changes). Any change makes a new entry. Entries are
prepared in a hidden staging directory beside them and renamed into place, so a run killed mid-write leaves no half
entry, and the next run preparing it resumes from the parts the killed one finished. Jobs that would prepare the
same entry at once take turns on a lock file beside it (`preparing`): one prepares, the others wait and find it
made. On a multi-node cluster `data.cache_dir` must be storage every node sees, like `checkpoint.dir` (the lock is
`flock`, which NFS v4 and most shared filesystems honour across hosts).
"""

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.config.job import JobConfig
from orchestrator.config.paths import expand_path, is_uri
from orchestrator.data.shards import damaged

PIPELINE_VERSION = 8
READ_CHUNK = 1 << 20


def file_stamp(path: str) -> tuple[int, int]:
    """A corpus file's size and modification time (ns), local or remote (pyarrow's filesystems: s3://, gs://, ...)."""
    if not is_uri(path):
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime_ns
    from pyarrow import fs

    filesystem, location = fs.FileSystem.from_uri(path)
    info = filesystem.get_file_info(location)
    return info.size, info.mtime_ns


def file_digest(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_files(job: JobConfig) -> list[str]:
    if not job.data.tokenizer.path:
        return []
    path = expand_path(job.data.tokenizer.path)
    return [path] if os.path.isfile(path) else sorted(str(p) for p in Path(path).iterdir() if p.is_file())


def fingerprint(job: JobConfig, files: list[str]) -> str:
    settings = job.data.model_dump(mode="json", exclude={"cache", "cache_dir", "paths"})
    inputs = {
        "version": PIPELINE_VERSION,
        "task": job.task,
        "data": settings,
        "files": [(path, *file_stamp(path)) for path in files],
        "tokenizer": [(os.path.basename(path), file_digest(path)) for path in tokenizer_files(job)],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:20]


def cache_root(job: JobConfig) -> Path:
    return Path(expand_path(job.data.cache_dir))


def entry_dir(job: JobConfig, key: str) -> Path:
    return cache_root(job) / f"{job.task}-{key}"


def staging_dir(entry: Path) -> Path:
    """Where `entry` is prepared before it is put in place; one job at a time (`preparing`), and kept when a
    preparation is killed: the next one resumes from the parts it finished (data/pipeline.py)."""
    staging = entry.with_name(f".{entry.name}.partial")
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def commit(staging: Path, entry: Path) -> None:
    """Atomic on one filesystem; a concurrent run that committed the same entry first wins."""
    try:
        os.rename(staging, entry)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def preparing(entry: Path) -> Iterator[None]:
    """Held while a job looks for `entry` and, missing, prepares it; a second job waits here, saying so once."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_name(f".{entry.name}.lock"), "w") as lock:  # hidden: the cache root lists its entries
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"data: waiting for another job preparing {entry}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_meta(entry: Path) -> dict | None:
    """The entry's metadata, None when there is no entry; written last, so an entry with it is whole."""
    meta = entry / "meta.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text())
    except ValueError:
        raise damaged(meta, "is unreadable (truncated?)", entry) from None
