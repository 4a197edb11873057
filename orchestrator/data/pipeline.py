"""The Ray Data pipeline a job runs before its workers start:

    read -> clean -> tokenizer -> measure (token lengths, split) -> [check answers] -> parts -> [augment] + encode
    + write shards -> index

Every stage is a Ray Data operator over the cluster's CPUs while they are still free. The cleaned and the measured
rows are staged as parquet files that later passes read (data/staging.py), the measured ones a directory per part.
The corpus is encoded a part at a time (a run of consecutive lines of a file: data/encode.py): the task that encodes
a part reads its staged files and writes its rows as one shard of each split (data/shards.py), in the cache entry's
staging directory (data/cache.py) or, uncached, a directory of the run's own beside it; the driver writes the
indexes last, from the parts' records. A preparation that is killed leaves its finished parts behind, and the next
one encodes only the others. Rows the stages drop are written to a quarantine file with their stage and reason, and
counted in the data report. Training workers then read only their rows of each step from the shards (data/feed.py),
so they never compete with preprocessing for CPUs, and the sizes needed for `epochs`, the ETA and the checks below
are known before any worker starts.
"""

import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray.data
from tokenizers import Tokenizer

from orchestrator.config.errors import UserError
from orchestrator.config.job import AugmentConfig, JobConfig
from orchestrator.data import cache
from orchestrator.data.augment import add_augmented_copies
from orchestrator.data.clean import clean
from orchestrator.data.encode import DEFAULT_CHAT_TEMPLATE, REPORT, check_answers, encode_part, measure, parts, sft_problem
from orchestrator.data.read import field_option, fields_of, file_format, read_rows, resolve_data_files, source_of
from orchestrator.data.report import DataReport, count_dropped, length_summary, quarantine_records
from orchestrator.data.shards import Split, damaged, write_index, write_shard, write_text_atomically
from orchestrator.data.staging import Staged, read_files, stage, staging_area
from orchestrator.data.tokenizers import (
    SEPARATOR_TOKENS,
    from_json,
    load_tokenizer,
    named_token,
    sample_rows,
    separator_id,
    template_tokens,
    texts_of,
    train_tokenizer,
)

if TYPE_CHECKING:  # the driver imports transformers only where a tokenizer is wrapped (data/tokenizers.py)
    from transformers import PreTrainedTokenizerFast

ROWS_PER_TASK_BATCH = 1024
QUARANTINE_FILE = "quarantine.jsonl"
TOKENIZER_FILE = "tokenizer.json"
PARTS = "parts"  # a record per part written: its shard of each split
SPLITS = {"train": False, "val": True}  # split -> its rows' is_val


@dataclass
class PreparedData:
    train: Split
    val: Split | None
    tokenizer_json: str
    train_sequences: int
    val_sequences: int
    label_names: list[str]
    report: DataReport
    directory: Path  # holds the splits and the quarantine file: the cache entry, or the run's own (`uncached`)
    uncached: bool = False  # the directory is this run's alone: its splits are removed when it ends (remove_uncached)
    chat_template: str | None = None  # sft: the template the records were rendered with, exported with the tokenizer


def rows_where(dataset: ray.data.Dataset, kept: bool) -> ray.data.Dataset:
    """The kept rows (stage == "") or the dropped ones."""
    return dataset.map_batches(lambda batch: {k: v[(batch["stage"] == "") == kept] for k, v in batch.items()}, batch_format="numpy")


def check_strict(job: JobConfig, rows: ray.data.Dataset) -> None:
    if not job.data.strict:
        return
    bad = rows_where(rows, kept=False).filter(lambda row: row["stage"] == "read").take(3)
    if bad:
        listed = "; ".join(f"{row['source']}: {row['reason']}" for row in bad)
        raise UserError(f"data.strict: unreadable rows ({listed}); fix them or set data.strict: false to quarantine them")


def get_tokenizer(job: JobConfig, kept: ray.data.Dataset, rows: int, saved: Path):
    """The job's tokenizer, or one trained on a sample of about `tokenizer.sample_texts` of the `rows` kept; the one
    `saved` by an interrupted preparation of this data when there is one, which its finished parts were encoded with."""
    cfg = job.data.tokenizer
    if saved.is_file():
        return from_json(saved.read_text())
    if cfg.path:
        return load_tokenizer(cfg.path)
    if (every := math.ceil(rows / cfg.sample_texts)) > 1:
        kept = kept.map_batches(sample_rows, batch_format="numpy", fn_kwargs={"every": every})
    # streamed through the driver batch by batch, never held whole
    return train_tokenizer(cfg, texts_of(kept.iter_batches(batch_size=ROWS_PER_TASK_BATCH, batch_format="numpy")))


def label_names_of(job: JobConfig, measured: Staged) -> list[str]:
    if job.task != "sequence_classification":
        return []
    names = job.data.labels or sorted(rows_where(measured.read(["label", "stage"]), kept=True).unique("label"))
    if len(names) < 2:
        raise UserError(
            f"data.label_field: {job.data.label_field!r} has {len(names)} class(es) after cleaning "
            f"({', '.join(map(repr, names))}); classification needs two or more"
        )
    return names


def write_quarantine(rows: ray.data.Dataset, path: Path, columns: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Streams the dropped rows into `path` (JSON lines) and returns their counts per stage and reason kind, counted
    as they pass: the driver holds the counts, not the rows."""
    with path.open("w") as out:

        def written() -> Iterator[dict]:
            for record in quarantine_records(rows.iter_rows(), columns):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                yield record

        return count_dropped(written())


def prepare(job: JobConfig) -> PreparedData:
    files = resolve_data_files(job)
    if job.data.cache:
        data = prepare_cached(job, files)
    else:
        data = run_pipeline(job, files, uncached_dir(job), fingerprint="")
        data.uncached = True
    for line in data.report.summary_lines():
        print(line, flush=True)
    print(f"data: quarantined rows: {data.directory / QUARANTINE_FILE}", flush=True)
    try:
        check_sizes(job, data)
    except UserError:
        remove_uncached(data)
        raise
    if not data.val_sequences:
        data.val = None
    return data


def prepare_cached(job: JobConfig, files: list[str]) -> PreparedData:
    """The cache entry of this data, prepared now unless it exists. Jobs preparing the same entry at once take turns:
    the first prepares it, the others wait and load it."""
    key = cache.fingerprint(job, files)
    entry = cache.entry_dir(job, key)
    with cache.preparing(entry):
        if meta := cache.read_meta(entry):
            started = time.perf_counter()
            data = load_cached(entry, meta, key)
            data.report.loaded_seconds = time.perf_counter() - started
            print(f"data: cache hit, preprocessing skipped: {entry}", flush=True)
            return data
        staging = cache.staging_dir(entry)
        store(run_pipeline(job, files, staging, fingerprint=key), staging, entry)
    data = load_cached(entry, cache.read_meta(entry), key)
    data.report.cache = "miss"
    return data


def uncached_dir(job: JobConfig) -> Path:
    """Where a job with `data.cache: false` writes its splits: beside the cache, on the storage its workers share."""
    root = cache.cache_root(job)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="uncached-", dir=root))


def remove_uncached(data: PreparedData) -> None:
    """The prepared data of a run that does not cache it, once the run has ended (its quarantine file stays, as
    printed)."""
    if data.uncached:
        for path in data.directory.iterdir():
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.name != QUARANTINE_FILE:
                path.unlink()


def run_pipeline(job: JobConfig, files: list[str], directory: Path, fingerprint: str) -> PreparedData:
    with staging_area(directory) as staging:
        return prepared_in(job, files, directory, staging, fingerprint)


def prepared_in(job: JobConfig, files: list[str], directory: Path, staging: Path, fingerprint: str) -> PreparedData:
    started = time.perf_counter()
    cfg = job.data
    report = DataReport()
    measured, tokenizer = clean_and_measure(job, files, directory, staging, report)
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    write_text_atomically(directory / TOKENIZER_FILE, tokenizer_json)
    report.rows_kept, report.tokens, report.length_bins, report.length_counts = token_lengths(measured.read(["stage", "n_tokens"]))
    if not report.rows_kept:
        dropped = "; ".join(f"{row['stage']} dropped {row['dropped']} ({row['reasons']})" for row in report.stage_table() if row["dropped"])
        raise UserError(f"data: no row is left after cleaning: {dropped or 'the files hold no rows'}")
    label_names = label_names_of(job, measured)
    chat = chat_settings(job, tokenizer)
    encoding = dict(
        task=job.task,
        tokenizer_json=tokenizer_json,
        seq_len=cfg.seq_len,
        separator=separator_id(tokenizer),
        pad=tokenizer.pad_token_id,
        label_ids={name: i for i, name in enumerate(label_names)},
        **chat,
    )
    columns = [*fields_of(job), "is_val", "row_id", "stage"]
    write_parts(measured, columns, directory, encoding, augment=cfg.augment if cfg.augment.copies else None)
    records = part_records(directory)
    check_encoding(job, [record[REPORT] for record in records if REPORT in record], files)
    shards = {split: [record[split] for record in records] for split in SPLITS}
    report.train_sequences, report.val_sequences = (write_index(directory / split, shards[split], fingerprint) for split in SPLITS)
    if cfg.augment.copies:
        report.augmented_rows = report.train_sequences + report.val_sequences - report.rows_kept  # one row per example
    report.seconds = time.perf_counter() - started
    train, val = Split(directory / "train"), Split(directory / "val")
    chat_template = chat["chat_template"] if job.task == "sft" else None
    return PreparedData(train, val, tokenizer_json, len(train), len(val), label_names, report, directory, chat_template=chat_template)


def chat_settings(job: JobConfig, tokenizer: "PreTrainedTokenizerFast") -> dict:
    """What sft's encoder renders records with: the job's chat template, else the tokenizer's, else the default
    prompt/response format; the tokenizer's special tokens, which templates name (eos_token, bos_token...)."""
    cfg = job.data
    return {
        "chat_template": cfg.chat_template or tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE,
        "special_tokens": template_tokens(tokenizer),
        "messages_field": cfg.messages_field,
        "train_on_inputs": cfg.train_on_inputs,
        "packing": cfg.packing,
    }


def check_encoding(job: JobConfig, reports: list[dict], files: list[str]) -> None:
    """A record the chat template cannot render, or no response token left in any example, is a job error (what
    sft's encoder reported of each part adds up every record; the other encoders report nothing)."""
    if not reports:
        return
    if found := sft_problem(reports, field_option(job, "text" if job.data.messages_field else "target")):
        problem, row_id = found
        raise UserError(problem if row_id is None else f"{problem} (first: {source_of(row_id, files)})")


def clean_and_measure(job: JobConfig, files: list[str], directory: Path, staging: Path, report: DataReport) -> tuple[Staged, "PreTrainedTokenizerFast"]:
    """The corpus read, cleaned and measured (token counts, the split), staged in `staging` (data/staging.py), with
    the tokenizer; the rows these stages drop go to the quarantine file, counted in `report`. The read streams into
    the cleaning stages, whose rows the tokenizer's sample and the measure stage read from their staged files."""
    cfg = job.data
    rows = read_rows(files, file_format(cfg.format, files), fields_of(job))
    labelled = job.task == "sequence_classification"
    cleaned, report.rows_read = clean(rows, cfg.clean, cfg.labels, labelled, files, staging / "cleaned")
    check_strict(job, cleaned)
    tokenizer = get_tokenizer(job, rows_where(cleaned, kept=True), report.rows_read, directory / TOKENIZER_FILE)
    tokenizer_json = tokenizer.backend_tokenizer.to_str()
    measured_rows = cleaned.map_batches(
        measure,
        batch_size=ROWS_PER_TASK_BATCH,
        batch_format="numpy",
        fn_kwargs=dict(
            tokenizer_json=tokenizer_json,
            min_tokens=cfg.clean.min_tokens,
            max_tokens=cfg.clean.max_tokens,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        ),
    )
    if "answer" in fields_of(job):
        encoding = dict(tokenizer_json=tokenizer_json, seq_len=cfg.seq_len, pad=tokenizer.pad_token_id)
        measured_rows = measured_rows.map_batches(check_answers, batch_size=ROWS_PER_TASK_BATCH, batch_format="numpy", fn_kwargs=encoding)
    measured = stage(measured_rows.map_batches(parts, batch_format="numpy"), staging / "measured", by="part")
    report.dropped = write_quarantine(rows_where(measured.read(), kept=False), directory / QUARANTINE_FILE, tuple(fields_of(job)))
    return measured, tokenizer


def token_lengths(rows: ray.data.Dataset) -> tuple[int, int, list[float], list[int]]:
    """The number of kept `rows` (their `stage` and `n_tokens`), their tokens and token-length histogram, in one
    pass: each block sends its count of each length (np.bincount), so the driver holds one count per length, not
    one per row."""
    counts = np.zeros(0, dtype=np.int64)
    blocks = rows.map_batches(_length_counts, batch_format="numpy", batch_size=None)
    for batch in blocks.iter_batches(batch_format="numpy", batch_size=None):
        for part in batch["counts"]:
            block = np.frombuffer(part, dtype=np.int64)
            counts = np.pad(counts, (0, max(len(block) - len(counts), 0)))
            counts[: len(block)] += block
    return length_summary(counts)


def _length_counts(batch: dict) -> dict:
    # bytes, not a tensor column: the blocks' arrays differ in length
    lengths = batch["n_tokens"][batch["stage"] == ""]
    return {"counts": np.array([np.bincount(lengths).astype(np.int64).tobytes()], dtype=object)}


def write_parts(measured: Staged, columns: list[str], directory: Path, encoding: dict, augment: AugmentConfig | None) -> None:
    """Encodes the parts of the `measured` rows that `directory` does not hold yet, each in one Ray task that reads
    the part's staged files (their `columns`), adds its augmented copies and writes its shards there (write_part):
    no part's rows, copies or encoded rows pass through the object store or the driver."""
    for unfinished in directory.glob("*/.*"):  # what tasks killed mid-write left (shards.write_atomically)
        unfinished.unlink()
    done = {int(record.stem, 16) for record in (directory / PARTS).glob("*.json")}
    if done:
        print(f"data: resuming an interrupted preparation: {len(done)} parts already written in {directory}", flush=True)
    todo = [{"part": part, "files": files} for part, files in sorted(measured.groups("part").items()) if part not in done]
    if todo:
        kwargs = {"directory": str(directory), "augment": augment, "columns": columns, **encoding}
        ray.data.from_items(todo, override_num_blocks=len(todo)).map_batches(write_staged_part, batch_size=1, fn_kwargs=kwargs).materialize()


def write_staged_part(batch: dict, directory: str, augment: AugmentConfig | None, columns: list[str], **encoding) -> dict:
    """write_part of the kept rows of one part's staged files (`batch`: the part and its files)."""
    rows = read_files(batch["files"][0], columns)
    kept = rows["stage"] == ""
    write_part({column: values[kept] for column, values in rows.items()}, int(batch["part"][0]), Path(directory), augment, **encoding)
    return {"part": batch["part"]}


def write_part(rows: dict, part: int, directory: Path, augment: AugmentConfig | None, **encoding) -> None:
    """Encodes one part's rows (any order), with their augmented copies, and writes its shard of each split, then its
    record, which marks it done."""
    name = f"{part:016x}"
    encoded = encode_part(add_augmented_copies(rows, augment) if augment else rows, **encoding) if len(rows["row_id"]) else {"is_val": np.zeros(0, bool)}
    record = {REPORT: encoded.pop(REPORT)} if REPORT in encoded else {}
    for split, validation in SPLITS.items():
        here = encoded["is_val"] == validation
        record[split] = write_shard(directory / split, name, {column: values[here] for column, values in encoded.items() if column != "is_val"})
    (directory / PARTS).mkdir(exist_ok=True)
    write_text_atomically(directory / PARTS / f"{name}.json", json.dumps(record))


def part_records(directory: Path) -> list[dict]:
    """The records of the parts written (by this run or an interrupted one): each split's shard, and what the
    encoder reported of the part."""
    return [json.loads(path.read_text()) for path in (directory / PARTS).glob("*.json")]


def store(data: PreparedData, staging: Path, entry: Path) -> None:
    """Completes the staged entry (the splits and the tokenizer are there already) and puts it in place."""
    meta = {"label_names": data.label_names, "chat_template": data.chat_template, "report": json.loads(data.report.to_json())}
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: its presence marks a whole entry
    cache.commit(staging, entry)


def load_cached(entry: Path, meta: dict, fingerprint: str) -> PreparedData:
    report = DataReport(**meta["report"])
    report.cache = "hit"
    # their indexes, and the size of every shard file: nothing of the data is read here
    train, val = (Split.checked(entry / name, fingerprint) for name in ("train", "val"))
    tokenizer_file = entry / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise damaged(tokenizer_file, "is missing", entry)
    tokenizer_json = tokenizer_file.read_text()
    labels, chat_template = meta["label_names"], meta.get("chat_template")
    return PreparedData(train, val, tokenizer_json, report.train_sequences, report.val_sequences, labels, report, entry, chat_template=chat_template)


def example_texts(data: PreparedData, count: int = 2, max_tokens: int = 24) -> list[str]:
    """The first texts of a few prepared sequences, decoded back (up to the first separator): the input example of
    the model a run logs. The raw rows are gone by then, and these are what training saw."""
    tokenizer = Tokenizer.from_str(data.tokenizer_json)  # `tokenizers` alone: the driver needs no transformers here
    separator = tokenizer.token_to_id(named_token(tokenizer.get_vocab(), SEPARATOR_TOKENS) or "")
    texts = []
    split = data.val if data.val_sequences else data.train
    for row in split.take(np.arange(min(count, len(split))))["input_ids"]:
        ids = [int(token) for token in row]
        start = next((i for i, token in enumerate(ids) if token != separator), len(ids))
        end = ids.index(separator, start) if separator in ids[start:] else len(ids)
        texts.append(tokenizer.decode(ids[start:end][:max_tokens], skip_special_tokens=True).strip())
    return texts


def check_sizes(job: JobConfig, data: PreparedData) -> None:
    """Enough sequences for one global batch of training (and of validation when the job holds data out)."""
    global_micro = job.train.micro_batch_size * job.data_parallel_size
    if data.train_sequences < job.global_batch_size:
        raise UserError(
            f"data: the corpus yields {data.train_sequences} training sequences of {job.data.seq_len} tokens, "
            f"fewer than one global batch ({job.data_parallel_size} data-parallel workers x {job.train.micro_batch_size} "
            f"x {job.train.grad_accum_steps} accumulated); add data or lower data.seq_len"
        )
    if job.data.val_fraction > 0 and data.val_sequences < global_micro:
        raise UserError(
            f"data.val_fraction: the validation split has {data.val_sequences} sequences, fewer than one global "
            f"micro batch ({global_micro}); raise data.val_fraction or set it to 0"
        )
