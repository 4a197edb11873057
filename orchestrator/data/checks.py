"""What the job file alone cannot tell: that the files a job reads exist and hold what it reads, and that the
directories it writes to can be written. Checked before Ray starts and before any data is read, by the commands
that run or check a job (`train`, `sweep`, `prepare`, `validate`, `submit`), without writing anything."""

import os
from pathlib import Path
from typing import Any

from orchestrator.config.errors import UserError, printable
from orchestrator.config.job import JobConfig
from orchestrator.config.load import LoadedSweep, in_file, load_job, load_sweep
from orchestrator.config.paths import expand_path, is_uri, pseudo_filesystem
from orchestrator.config.redact import redact_text
from orchestrator.data.read import check_columns, fields_of, file_format, parse_file, resolve_data_files

FIRST_RECORDS_BYTES = 1 << 18  # of the first file: the sft records rendered before Ray starts (encoding renders all)


def output_dir_problem(path: str) -> str | None:
    """Why a local output directory could not be made and written, or None. Asks the system about the nearest
    existing directory on its way (a read-only filesystem answers no too), and creates nothing."""
    target = Path(os.path.abspath(path))
    if where := pseudo_filesystem(str(target)):
        return f"{where} is a pseudo filesystem"
    ancestor = next(folder for folder in (target, *target.parents) if os.path.lexists(folder))
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"no permission to create files in {ancestor}"
    return None


def check_output_dirs(job: JobConfig) -> None:
    """checkpoint.dir and, if the cache is on, data.cache_dir: local ones must be writable (URIs are pyarrow's)."""
    outputs = {"checkpoint.dir": job.checkpoint.dir, "data.cache_dir": job.data.cache_dir if job.data.cache else None}
    for field, path in outputs.items():
        if path and not is_uri(expanded := expand_path(path)) and (problem := output_dir_problem(expanded)):
            hint = "; fix it or set data.cache: false" if field == "data.cache_dir" else ""
            raise UserError(f"{field}: {printable(path)} is not writable ({problem}){hint}")


def check_inputs(job: JobConfig) -> None:
    """The output directories can be written, and the files the job names exist, hold something and have the
    columns it reads."""
    check_output_dirs(job)
    files = resolve_data_files(job)
    check_columns(job, files)
    check_first_chats(job, files)
    if job.data.tokenizer.path and not os.path.exists(expand_path(job.data.tokenizer.path)):
        raise UserError(f"data.tokenizer.path: {job.data.tokenizer.path!r} does not exist")
    if job.model.pretrained and not os.path.isfile(os.path.join(expand_path(job.model.pretrained), "config.json")):
        raise UserError(f"model.pretrained: {job.model.pretrained!r} is not a Hugging Face model directory")


def check_inputs_of_file(job: JobConfig, path: str | Path) -> None:
    try:
        check_inputs(job)
    except UserError as err:  # it may quote a path that is also the value of a secret-named key
        raise in_file(path, UserError(redact_text(str(err), job.model_dump()))) from None


def check_first_chats(job: JobConfig, files: list[str]) -> None:
    """sft with the job's own chat template and a tokenizer the pipeline trains (whose special tokens are known
    before it exists): the records of the first 256 kB of the first file (JSON lines or csv) render, or the job
    stops here instead of after cleaning."""
    cfg = job.data
    if job.task != "sft" or not cfg.chat_template or cfg.tokenizer.path or is_uri(files[0]):
        return
    fmt = file_format(cfg.format, files)
    if fmt not in ("jsonl", "csv"):
        return
    from orchestrator.data.encode import UnusableRecord, chat_of, chat_segments
    from orchestrator.data.tokenizers import PAD_TOKENS, SEPARATOR_TOKENS

    with open(expand_path(files[0]), "rb") as handle:
        head = handle.read(FIRST_RECORDS_BYTES)
    head = head if len(head) < FIRST_RECORDS_BYTES else head[: head.rfind(b"\n") + 1]  # whole lines only
    special_tokens = {"eos_token": SEPARATOR_TOKENS[cfg.tokenizer.train], "pad_token": PAD_TOKENS[cfg.tokenizer.train]}
    for row in parse_file(head, files[0], 0, fmt, fields_of(job)):
        if row["stage"]:
            continue  # the reader's problems are quarantined or refused by the pipeline (data.strict)
        try:
            chat_segments(chat_of(row["text"], row.get("target"), cfg.messages_field), cfg.chat_template, special_tokens)
        except UnusableRecord as err:
            raise UserError(f"{err} ({row['source']})") from None


def checked_job(path: str | Path, overrides: list[str] = (), raw: dict[str, Any] | None = None) -> JobConfig:
    """The job of the file (config/load.py load_job), its inputs and outputs checked; errors name the file."""
    job = load_job(path, overrides, raw)
    check_inputs_of_file(job, path)
    return job


def checked_sweep(path: str | Path, overrides: list[str] = (), raw: dict[str, Any] | None = None) -> LoadedSweep:
    """The sweep of the file (config/load.py load_sweep, `overrides` on its base job), its base job's inputs and
    outputs checked."""
    sweep = load_sweep(path, overrides, raw)
    check_inputs_of_file(sweep.base_job, sweep.base_path)
    return sweep
