"""YAML file + `--set` overrides -> a validated JobConfig (or SweepConfig), or a UserError naming the field."""

import copy
import glob
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.config.errors import UserError
from orchestrator.config.job import SCHEDULE_CLASSES, SCHEDULE_NAMES, JobConfig
from orchestrator.config.sweep import SweepConfig
from orchestrator.models.tasks import TASKS


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


MAX_YAML_VALUES = 100_000  # far more than any job needs; YAML aliases can make a small file expand without bound


def count_values(node: Any, limit: int) -> int:
    """Values in a loaded document, counting stopped past `limit` (an alias bomb never finishes counting)."""
    count, stack = 0, [node]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A file's YAML mapping, read safely: no python tags, no duplicate keys, no alias bombs, UTF-8 only."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a YAML file")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line})") from None
    if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise UserError(f"{path}: the file is empty")
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level (got a {type(raw).__name__})")
    if count_values(raw, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise UserError(f"{path}: expands to more than {MAX_YAML_VALUES:,} values (YAML aliases?); refused")
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw['a']['b']['c'] = value for key `a.b.c`, creating sections on the way."""
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{key}: {part} is not a section")
    node[leaf] = value


SHARED_STORAGE = "ORCHESTRATOR_SHARED_STORAGE"
SHARED_DIRS = {"checkpoint.dir": "runs", "data.cache_dir": "datasets"}


def with_shared_storage(raw: dict[str, Any]) -> dict[str, Any]:
    """On a cluster of several nodes, checkpoints and the data cache must be on storage every node sees. Where
    $ORCHESTRATOR_SHARED_STORAGE names such a mounted directory (the configs in cluster/ set it), the keys in
    SHARED_DIRS that a job file leaves unset get a directory there, so one job file runs on one machine or many."""
    if shared := os.environ.get(SHARED_STORAGE):
        for key, subdir in SHARED_DIRS.items():
            section, field = key.split(".")
            values = raw.get(section)
            if values is None or (isinstance(values, dict) and field not in values):  # else validation speaks
                set_key(raw, key, f"{shared.rstrip('/')}/{subdir}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b.c=value` sets raw['a']['b']['c']; the value is read as YAML, so the schema types it."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item}: expected dotted.key=value")
        try:
            set_key(raw, key, yaml.safe_load(value))
        except UserError as err:
            raise UserError(f"--set {item}: {err}") from None
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
        elif problem["type"] == "union_tag_invalid":  # a schedule name that no schedule has
            context = problem["ctx"]
            location = f"{location}.{context['discriminator'].strip(chr(39))}"
            message = f"must be one of {context['expected_tags']} (got {context['tag']!r})"
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


def storage_path(job: JobConfig) -> str:
    """Where the job's runs keep their checkpoints: checkpoint.dir, made absolute unless it is a URI."""
    path = expand_path(job.checkpoint.dir)
    return path if is_uri(path) else os.path.abspath(path)


def resolve_data_files(job: JobConfig) -> list[str]:
    """Expands globs of local paths (URIs pass through to pyarrow). Missing or empty input is a UserError."""
    files: list[str] = []
    for index, pattern in enumerate(job.data.paths):
        pattern = expand_path(pattern)
        if is_uri(pattern):
            files.append(pattern)
            continue
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


def check_inputs(job: JobConfig) -> None:
    """Checks what the schema cannot: that the files the job names exist, hold something and have the columns it
    reads, and that the data cache can be written. All before Ray starts."""
    from orchestrator.data.cache import check_writable  # the data package needs this one loaded first
    from orchestrator.data.read import check_columns

    check_columns(job, resolve_data_files(job))
    check_writable(job)
    if job.data.tokenizer.path and not os.path.exists(expand_path(job.data.tokenizer.path)):
        raise UserError(f"data.tokenizer.path: {job.data.tokenizer.path!r} does not exist")
    if job.model.pretrained and not os.path.isfile(os.path.join(expand_path(job.model.pretrained), "config.json")):
        raise UserError(f"model.pretrained: {job.model.pretrained!r} is not a Hugging Face model directory")


def in_file(path: str | Path, err: UserError) -> UserError:
    """The error with the file it is about in front of each of its lines."""
    return UserError("\n".join(f"{path}: {line}" for line in str(err).splitlines()))


def load_job(path: str | Path, overrides: list[str] = ()) -> JobConfig:
    raw = with_shared_storage(apply_overrides(read_yaml(path), list(overrides)))
    try:
        job = validate(raw)
        check_inputs(job)
    except UserError as err:
        raise in_file(path, err) from None
    return job


# --- sweeps ------------------------------------------------------------------------------------------


def is_sweep(raw: dict[str, Any]) -> bool:
    return "search_space" in raw or "base" in raw


def is_job_key(model: type[BaseModel], key: str) -> bool:
    """Whether the dotted key names a field of the schema (any member of a union; anything under a dict)."""
    head, _, rest = key.partition(".")
    field = model.model_fields.get(head)
    if field is None:
        return False
    if not rest:
        return True
    candidates = typing.get_args(field.annotation) or (field.annotation,)
    for candidate in candidates:
        candidate = typing.get_origin(candidate) or candidate
        if candidate is dict:
            return True
        if isinstance(candidate, type) and issubclass(candidate, BaseModel) and is_job_key(candidate, rest):
            return True
    return False


@dataclass
class LoadedSweep:
    path: Path
    config: SweepConfig
    name: str
    base_raw: dict[str, Any]  # the base job file with the sweep's overrides applied
    base_job: JobConfig

    def trial_raw(self, values: dict[str, Any]) -> dict[str, Any]:
        """The base job with a trial's values set. Trials checkpoint whenever they evaluate, so every result
        Tune sees carries the metric and a checkpoint (to resume from, or for PBT to exploit)."""
        raw = copy.deepcopy(self.base_raw)
        if any(key.startswith("train.schedule.") for key in values):  # the schedule's type is chosen by its name
            raw["train"].setdefault("schedule", {}).setdefault("name", self.base_job.train.schedule.name)
        for key, value in values.items():
            set_key(raw, key, value.item() if hasattr(value, "item") else value)  # numpy scalars from searchers
        if "train.schedule.name" in values:  # a schedule switched by the sweep drops the base schedule's own options
            fields = SCHEDULE_CLASSES[values["train.schedule.name"]].model_fields
            raw["train"]["schedule"] = {k: v for k, v in raw["train"]["schedule"].items() if k in fields}
        if self.base_job.checkpoint.every_steps and self.base_job.train.eval_every:
            set_key(raw, "checkpoint.every_steps", raw["train"].get("eval_every", self.base_job.train.eval_every))
        return raw

    def trial_job(self, values: dict[str, Any]) -> JobConfig:
        return validate(self.trial_raw(values))


def load_sweep(path: str | Path) -> LoadedSweep:
    path = Path(path)
    try:
        config = validate(read_yaml(path), SweepConfig)
    except UserError as err:
        raise in_file(path, err) from None
    base_path = (path.parent / expand_path(config.base)).resolve()
    base_raw = read_yaml(base_path)
    for key, value in config.overrides.items():
        if not is_job_key(JobConfig, key):
            raise UserError(f"{path}: overrides.{key}: not a key of the job (see: orchestrator schema)")
        set_key(base_raw, key, value)
    with_shared_storage(base_raw)
    try:
        base_job = validate(base_raw)
        check_inputs(base_job)
    except UserError as err:
        raise in_file(base_path, err) from None
    sweep = LoadedSweep(path, config, config.name or path.stem, base_raw, base_job)
    try:
        check_sweep(sweep)
    except UserError as err:
        raise in_file(path, err) from None
    return sweep


def check_sweep(sweep: LoadedSweep) -> None:
    """What the sweep schema cannot check alone: the searched keys and the metric against the base job."""
    config, job = sweep.config, sweep.base_job
    for key, distribution in config.search_space.items():
        if not is_job_key(JobConfig, key):
            raise UserError(f"search_space.{key}: not a key of the job (see: orchestrator schema)")
        for value in distribution.extremes():
            try:
                sweep.trial_job({key: value})
            except UserError as err:
                raise UserError(f"search_space.{key}: {value!r} makes the job invalid: {str(err).splitlines()[0]}") from None
    if not job.train.eval_every:
        raise UserError("train.eval_every: trials report their results to Tune when they evaluate; set it")
    reported = TASKS[job.task].reported_metrics
    if config.metric not in reported:
        raise UserError(f"metric: the {job.task} task reports {', '.join(reported)} (got {config.metric!r})")
    if config.metric.startswith("eval/") and not job.data.val_fraction > 0:
        raise UserError(f"metric: {config.metric} needs evaluations: set train.eval_every and data.val_fraction > 0")
    if config.scheduler.name in ("pbt", "pb2"):
        if not job.checkpoint.every_steps:
            raise UserError(
                f"scheduler: {config.scheduler.name} restarts trials from checkpoints of better ones; "
                "the base job turns checkpoints off (checkpoint.every_steps: null)"
            )
        interval = config.scheduler.perturbation_steps(job.train.eval_every)
        if interval % job.train.eval_every:
            raise UserError(
                f"scheduler.perturbation_interval: {interval} is not a multiple of train.eval_every ({job.train.eval_every})"
            )
