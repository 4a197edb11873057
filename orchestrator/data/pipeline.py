"""The Ray Data pipeline a job runs before its workers start: read -> tokenize -> pack -> split -> shuffle.

It runs on the cluster's CPUs while they are still free, and keeps the packed token blocks in Ray's object
store (never in the driver's memory). Training workers then only stream finished blocks, so they never
compete with preprocessing tasks for CPUs, and the sizes needed for `epochs`, the ETA and the checks below are
known before any worker starts.
"""

import functools
import os
import time
import zlib
from dataclasses import dataclass

import numpy as np
import ray.data
from tokenizers import Tokenizer

from orchestrator.config.errors import UserError
from orchestrator.config.job import JobConfig
from orchestrator.config.load import resolve_data_files
from orchestrator.data.tokenizers import load_tokenizer, separator_id, texts_of, train_tokenizer

READERS = {
    "jsonl": ray.data.read_json,
    "json": ray.data.read_json,
    "parquet": ray.data.read_parquet,
    "csv": ray.data.read_csv,
    "txt": ray.data.read_text,  # one row per line, in a column named "text"
}
ROWS_PER_TASK_BATCH = 1024


@dataclass
class PreparedData:
    train: ray.data.Dataset
    val: ray.data.Dataset | None
    tokenizer_json: str
    train_sequences: int
    val_sequences: int


def file_format(job: JobConfig, files: list[str]) -> str:
    if job.data.format != "auto":
        return job.data.format
    formats = {os.path.splitext(path)[1].lstrip(".").lower() for path in files}
    if len(formats) != 1 or not formats <= READERS.keys():
        raise UserError(f"data.format: cannot infer one format from extensions {sorted(formats)}; set data.format")
    return formats.pop()


def read_corpus(job: JobConfig, files: list[str]) -> ray.data.Dataset:
    """The corpus as one string column named `text`."""
    fmt = file_format(job, files)
    docs = READERS[fmt](files)
    if fmt == "txt":
        return docs
    columns = docs.schema().names
    if job.data.text_field not in columns:
        raise UserError(f"data.text_field: {job.data.text_field!r} is not a column of the corpus (columns: {columns})")
    return docs.select_columns([job.data.text_field]).rename_columns({job.data.text_field: "text"})


def is_validation(text: str, val_fraction: float, seed: int) -> bool:
    """Deterministic document-level split: the same document lands in the same split on every run."""
    return zlib.crc32(f"{seed}:{text}".encode()) < val_fraction * 2**32


@functools.lru_cache(maxsize=2)
def _tokenizer(tokenizer_json: str) -> Tokenizer:
    return Tokenizer.from_str(tokenizer_json)


def pack(token_lists: list[list[int]], separator: int, seq_len: int) -> np.ndarray:
    """Concatenates documents, each ended by `separator`, and cuts the stream into full `seq_len` rows."""
    stream = np.fromiter((t for tokens in token_lists for t in (*tokens, separator)), dtype=np.int32)
    rows = len(stream) // seq_len
    return stream[: rows * seq_len].reshape(rows, seq_len)


def tokenize_and_pack(batch: dict, tokenizer_json: str, separator: int, seq_len: int, val_fraction: float, seed: int):
    tokenizer = _tokenizer(tokenizer_json)
    texts = [text for text in batch["text"] if isinstance(text, str) and text.strip()]
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    held_out = [is_validation(text, val_fraction, seed) for text in texts]
    train = pack([e.ids for e, val in zip(encoded, held_out) if not val], separator, seq_len)
    val = pack([e.ids for e, val in zip(encoded, held_out) if val], separator, seq_len)
    return {
        "input_ids": np.concatenate([train, val]),
        "is_val": np.concatenate([np.zeros(len(train), bool), np.ones(len(val), bool)]),
    }


def _split(batch: dict, validation: bool) -> dict:
    return {"input_ids": batch["input_ids"][batch["is_val"] == validation]}


def quiet_data_progress() -> None:
    """Ray Data's progress bars flood job logs (they are not a terminal); the pipeline reports its own summary."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False


def prepare(job: JobConfig) -> PreparedData:
    quiet_data_progress()
    # Blocks in file order: the tokenizer and the packed sequences then depend only on the files and the seed.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    started = time.perf_counter()
    docs = read_corpus(job, resolve_data_files(job))
    cfg = job.data
    if cfg.tokenizer.path:
        tokenizer = load_tokenizer(cfg.tokenizer.path)
    else:  # streamed through the driver batch by batch, never held whole
        tokenizer = train_tokenizer(cfg.tokenizer, texts_of(docs.iter_batches(batch_size=ROWS_PER_TASK_BATCH)))
    tokenizer_json = tokenizer.backend_tokenizer.to_str()

    packed = docs.map_batches(
        tokenize_and_pack,
        batch_size=ROWS_PER_TASK_BATCH,
        batch_format="numpy",
        fn_kwargs=dict(
            tokenizer_json=tokenizer_json,
            separator=separator_id(tokenizer),
            seq_len=cfg.seq_len,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        ),
    ).materialize()
    train = packed.map_batches(_split, fn_kwargs={"validation": False}, batch_format="numpy")
    train = train.random_shuffle(seed=cfg.seed).materialize()
    val = packed.map_batches(_split, fn_kwargs={"validation": True}, batch_format="numpy").materialize()
    data = PreparedData(train, val, tokenizer_json, train.count(), val.count())
    print(
        f"data: {data.train_sequences:,} train and {data.val_sequences:,} validation sequences of {cfg.seq_len} "
        f"tokens, vocabulary {tokenizer.vocab_size:,}, prepared in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    check_sizes(job, data)
    if not data.val_sequences:
        data.val = None
    return data


def check_sizes(job: JobConfig, data: PreparedData) -> None:
    global_micro = job.train.micro_batch_size * job.scaling.num_workers
    if data.train_sequences < global_micro:
        raise UserError(
            f"data: the corpus yields {data.train_sequences} training sequences of {job.data.seq_len} tokens, "
            f"fewer than one global micro batch ({job.scaling.num_workers} workers x {job.train.micro_batch_size}); "
            "add data or lower data.seq_len"
        )
    if job.data.val_fraction > 0 and data.val_sequences < global_micro:
        raise UserError(
            f"data.val_fraction: the validation split has {data.val_sequences} sequences, fewer than one global "
            f"micro batch ({global_micro}); raise data.val_fraction or set it to 0"
        )
