"""Reading the corpus into rows, one Ray task per file, without losing a single bad line.

Ray's own readers fail a whole file on one malformed JSON line; this one parses line by line, so a malformed
line, undecodable bytes or a row missing a field becomes a quarantined row naming its file and line (stage
`read`), and every other line still trains. Every row has the columns the cleaning stages work on:
text, [label], [target], [question, answer, answer_start], source ("path:line"), row_id (file index << 32 | line: corpus order), stage, reason.
"""

import csv
import glob
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.config.errors import UserError, printable
from orchestrator.config.job import JobConfig
from orchestrator.config.paths import expand_path, glob_problem, is_uri

FORMATS = ("jsonl", "json", "parquet", "csv", "txt")
MAX_QUARANTINED_CHARS = 2000  # of a malformed line, in the quarantine file
LINE_BITS = 32  # a row_id: file index << LINE_BITS | line


def resolve_data_files(job: JobConfig) -> list[str]:
    """Expands globs of local paths (URIs pass through to pyarrow). Missing or empty input is a UserError."""
    files: list[str] = []
    for index, pattern in enumerate(job.data.paths):
        pattern = expand_path(pattern)
        if is_uri(pattern):
            files.append(pattern)
            continue
        if problem := glob_problem(pattern):
            raise UserError(f"data.paths[{index}]: {printable(repr(pattern))}: {problem}")
        if os.path.isdir(pattern):
            raise UserError(f"data.paths[{index}]: {pattern!r} is a directory; name its files, e.g. '{pattern}/*.jsonl'")
        matches = sorted(path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path))
        if not matches:
            raise UserError(f"data.paths[{index}]: no file matches {pattern!r}")
        files.extend(matches)
    local = [path for path in files if not is_uri(path)]
    if local and len(local) == len(files) and sum(os.path.getsize(path) for path in local) == 0:
        raise UserError(f"data.paths: the corpus is empty ({len(local)} files, 0 bytes)")
    return files


def file_format(declared: str, files: list[str], option: str = "data.format") -> str:
    """The declared format, or the one extension all files share (`option` names the setting in errors)."""
    if declared != "auto":
        return declared
    formats = {os.path.splitext(path)[1].lstrip(".").lower() for path in files}
    if len(formats) != 1 or not formats <= set(FORMATS):
        raise UserError(f"{option}: cannot infer one format of {', '.join(FORMATS)} from extensions {sorted(formats)}")
    return formats.pop()


def row_fields(
    text_field: str,
    label_field: str | None = None,
    target_field: str | None = None,
    messages_field: str | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    answer_start_field: str | None = None,
) -> dict[str, str]:
    """Row column -> the corpus field it is read from. A chat (sft's messages_field) travels as the text: its JSON."""
    named = {"label": label_field, "target": target_field, "question": question_field, "answer": answer_field, "answer_start": answer_start_field}
    return {"text": messages_field or text_field} | {column: field for column, field in named.items() if field}


def fields_of(job: JobConfig) -> dict[str, str]:
    cfg = job.data
    answers = {"question_field": cfg.question_field, "answer_field": cfg.answer_field, "answer_start_field": cfg.answer_start_field}
    return row_fields(cfg.text_field, cfg.label_field, cfg.target_field, cfg.messages_field, **answers)


def field_option(job: JobConfig, column: str) -> str:
    """The job setting that names the corpus field of a row column."""
    if column == "text" and job.data.messages_field:
        return "data.messages_field"
    return f"data.{column}_field"


def check_columns(job: JobConfig, files: list[str]) -> None:
    """Tabular files name their columns up front: a missing one is a job error, found before Ray starts."""
    fmt = file_format(job.data.format, files)
    if fmt not in ("csv", "parquet"):
        return
    for path in files:
        if fmt == "csv":
            with open(path, newline="", encoding="utf-8", errors="replace") as handle:
                columns = next(csv.reader(handle), [])
        else:
            try:
                columns = pq.read_schema(path).names
            except pa.ArrowInvalid as err:
                raise UserError(f"data.paths: {path} is not a readable parquet file ({err})") from None
        for key, name in fields_of(job).items():
            if name not in columns:
                raise UserError(f"{field_option(job, key)}: {path} has no column {name!r} (columns: {', '.join(columns)})")


def _row(fields: dict[str, str], record, source: str, row_id: int) -> dict:
    row = {"text": None, "source": source, "row_id": row_id, "stage": "", "reason": ""}
    if not isinstance(record, dict):
        return row | {"text": str(record)[:MAX_QUARANTINED_CHARS], "stage": "read", "reason": "not a JSON object"}
    for key, name in fields.items():
        value = record.get(name)
        if value is None and name not in record:
            row["stage"], row["reason"] = "read", f"missing field {name!r}"
        row[key] = None if value is None else json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)
    return row


def _bad_line(fields: dict[str, str], raw: bytes | str, source: str, row_id: int, reason: str) -> dict:
    text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
    return {key: None for key in fields} | {
        "text": text[:MAX_QUARANTINED_CHARS],
        "source": source,
        "row_id": row_id,
        "stage": "read",
        "reason": reason,
    }


def source_of(row_id: int, files: list[str]) -> str:
    """The "path:line" of the row `row_id` numbers (parse_file's numbering; `files` as read_rows was given them)."""
    return f"{files[row_id >> LINE_BITS]}:{row_id & (1 << LINE_BITS) - 1}"


def parse_file(data: bytes, path: str, file_index: int, fmt: str, fields: dict[str, str]) -> list[dict]:
    """All rows of one file; line numbers (rows for parquet) count from 1."""
    base = file_index << LINE_BITS
    if fmt == "parquet":
        records = pq.read_table(io.BytesIO(data)).to_pylist()
        return [_row(fields, record, f"{path}:{n}", base + n) for n, record in enumerate(records, 1)]
    if fmt == "json" and data.lstrip()[:1] == b"[":
        try:
            records = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return [_bad_line(fields, data, f"{path}:1", base + 1, f"malformed JSON: {err}")]
        return [_row(fields, record, f"{path}:{n}", base + n) for n, record in enumerate(records, 1)]

    rows, good_lines = [], []
    for n, raw in enumerate(data.splitlines(keepends=True), 1):  # csv needs the line ends inside quoted fields
        source = f"{path}:{n}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            rows.append(_bad_line(fields, raw, source, base + n, f"undecodable bytes (not UTF-8 at byte {err.start})"))
            continue
        if not line.strip():
            continue
        if fmt == "txt":
            rows.append(_row(fields, {fields["text"]: line.rstrip("\r\n")}, source, base + n))
        elif fmt == "csv":
            good_lines.append((n, line))
        else:
            try:
                rows.append(_row(fields, json.loads(line), source, base + n))
            except json.JSONDecodeError as err:
                rows.append(_bad_line(fields, line, source, base + n, f"malformed JSON: {err.msg} at column {err.colno}"))
    if fmt == "csv" and good_lines:
        numbers = [n for n, _ in good_lines]
        reader = csv.DictReader(line for _, line in good_lines)
        for record in reader:  # a quoted field may span lines: a record is numbered by its last line
            n = numbers[reader.line_num - 1]
            rows.append(_row(fields, record, f"{path}:{n}", base + n))
    return rows


def read_rows(files: list[str], fmt: str, fields: dict[str, str]):
    """A ray.data.Dataset of rows (ray is imported here: `orchestrator validate` checks columns without it)."""
    import ray.data

    index = {path: i for i, path in enumerate(files)}

    def rows_of(item: dict) -> list[dict]:
        number = _file_index(index, item["path"])
        return parse_file(item["bytes"], files[number], number, fmt, fields)  # sources name files as the job does

    return ray.data.read_binary_files(files, include_paths=True).flat_map(rows_of)


def _file_index(index: dict[str, int], path: str) -> int:
    """Ray names remote files without their scheme (s3://b/f.jsonl -> b/f.jsonl)."""
    return index[path] if path in index else next(i for name, i in index.items() if name.endswith(path))
