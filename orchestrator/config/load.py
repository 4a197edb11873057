"""YAML file + `--set` overrides -> a validated JobConfig, or a UserError naming the field."""

import glob
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.config.errors import UserError
from orchestrator.config.job import SCHEDULE_NAMES, JobConfig


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML (no python tags) that also refuses duplicate keys, which plain YAML silently overwrites."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` sets raw['a']['b']['c']; the value is read as YAML, so the schema types it."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item}: expected dotted.key=value")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item}: {part} is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: `section.field: what is wrong (got X)`."""
    lines = []
    for problem in err.errors():
        location = ".".join(str(part) for part in problem["loc"] if not _is_union_tag(part))
        message = problem["msg"].removeprefix("Value error, ")
        message = message.replace("Input should be", "must be").replace("Extra inputs are not permitted", "unknown key")
        if problem["type"] == "value_error":
            # Cross-field checks name their own field, relative to the section that ran them.
            field, _, message = message.partition(": ")
            location = f"{location}.{field}" if location else field
        elif problem["type"] not in ("missing", "extra_forbidden"):
            message += f" (got {problem['input']!r})"
        lines.append(f"{location}: {message}")
    return "\n".join(lines)


def _is_union_tag(part) -> bool:
    # Pydantic puts the chosen schedule's name into the location; the user never wrote it.
    return part in SCHEDULE_NAMES


def validate(raw: dict[str, Any], model: type[BaseModel] = JobConfig):
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(format_validation_error(err)) from None


def expand_path(pattern: str) -> str:
    return os.path.expanduser(os.path.expandvars(pattern))


def is_uri(path: str) -> bool:
    return "://" in path


def resolve_data_files(job: JobConfig) -> list[str]:
    """Expands globs of local paths (URIs pass through to pyarrow). Missing or empty input is a UserError."""
    files: list[str] = []
    for index, pattern in enumerate(job.data.paths):
        pattern = expand_path(pattern)
        if is_uri(pattern):
            files.append(pattern)
            continue
        matches = sorted(path for path in glob.glob(pattern, recursive=True) if os.path.isfile(path))
        if not matches:
            raise UserError(f"data.paths[{index}]: no file matches {pattern!r}")
        files.extend(matches)
    local = [path for path in files if not is_uri(path)]
    if local and len(local) == len(files) and sum(os.path.getsize(path) for path in local) == 0:
        raise UserError(f"data.paths: the corpus is empty ({len(local)} files, 0 bytes)")
    return files


def check_inputs(job: JobConfig) -> None:
    """Checks what the schema cannot: that the files the job names exist and hold something."""
    resolve_data_files(job)
    if job.data.tokenizer.path and not os.path.exists(expand_path(job.data.tokenizer.path)):
        raise UserError(f"data.tokenizer.path: {job.data.tokenizer.path!r} does not exist")
    if job.model.pretrained and not os.path.isfile(os.path.join(expand_path(job.model.pretrained), "config.json")):
        raise UserError(f"model.pretrained: {job.model.pretrained!r} is not a Hugging Face model directory")


def load_job(path: str | Path, overrides: list[str] = ()) -> JobConfig:
    raw = apply_overrides(read_yaml(path), list(overrides))
    try:
        job = validate(raw)
        check_inputs(job)
    except UserError as err:
        raise UserError("\n".join(f"{path}: {line}" for line in str(err).splitlines())) from None
    return job
