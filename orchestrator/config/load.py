"""YAML file + `--set` overrides -> a validated JobConfig (or SweepConfig), or a UserError naming the field."""

import copy
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.config.errors import CONTROL_CHARACTERS, MAX_ECHO_CHARS, UserError, printable
from orchestrator.config.job import SCHEDULE_CLASSES, SCHEDULE_NAMES, JobConfig
from orchestrator.config.names import file_name
from orchestrator.config.paths import expand_path
from orchestrator.config.redact import is_secret_name, redact_text
from orchestrator.config.sweep import SweepConfig
from orchestrator.models.tasks import TASKS

MAX_YAML_VALUES = 100_000  # far more than any job needs; YAML aliases can make a small file expand without bound
MAX_YAML_DEPTH = 64  # far deeper than any job nests; PyYAML composes (and Python copies) nested values recursively


def _core_scalar(kind: str, pattern: str, convert):
    """A constructor for an implicit (or explicitly tagged) scalar of YAML 1.2's core schema."""
    matcher = re.compile(pattern, re.VERBOSE)

    def construct(loader: yaml.SafeLoader, node: yaml.Node):
        text = loader.construct_scalar(node)
        if not matcher.fullmatch(text):
            raise yaml.constructor.ConstructorError(None, None, f"{printable(repr(text))} is not a YAML {kind}", node.start_mark)
        return convert(text)

    return construct


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node):
    raise yaml.constructor.ConstructorError(None, None, f"the tag {printable(repr(node.tag))} is not allowed in job files", node.start_mark)


# YAML 1.2's core schema (the YAML 1.1 one PyYAML follows reads yes/on as true, 12:30 as 750 and 0123 as 83), except
# that a leading zero makes no number, so 0123 stays text and fails the schema by type rather than meaning 123.
# kind: (pattern, the characters a value of that kind can start with, conversion).
CORE_SCHEMA = {
    "null": (r"~|null|Null|NULL|", ("~", "n", "N", ""), lambda text: None),
    "bool": (r"true|True|TRUE|false|False|FALSE", "tTfF", lambda text: text.lower() == "true"),
    "int": (
        r"[-+]?(0|[1-9][0-9]*) | 0o[0-7]+ | 0x[0-9a-fA-F]+",
        "-+0123456789",
        lambda text: int(text[2:], {"o": 8, "x": 16}[text[1]]) if text[1:2] in ("o", "x") else int(text),
    ),
    "float": (
        r"[-+]?(\.[0-9]+ | (0|[1-9][0-9]*)(\.[0-9]*)?)([eE][-+]?[0-9]+)? | [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)",
        "-+.0123456789",
        lambda text: float(text.replace(".", "", 1) if text.lower().lstrip("+-") in (".inf", ".nan") else text),
    ),
}
REFUSED_TAGS = ("timestamp", "binary", "set", "omap", "pairs")  # safe, but no job key takes them


# libyaml's parser where PyYAML has it (its wheels do): the pure-Python one takes seconds to scan a 10 MB value.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_SafeLoader):
    """Safe YAML (no python tags) read with the core schema of YAML 1.2, that also refuses duplicate keys (which
    plain YAML silently overwrites) and keys that are not plain values."""

    yaml_implicit_resolvers: ClassVar[dict] = {}  # its own: only the core schema below, not YAML 1.1's

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise UserError(f"line {key_node.start_mark.line + 1}: a key must be a plain value, not a list or mapping")
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise UserError(f"line {key_node.start_mark.line + 1}: duplicate key {printable(repr(key))}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _resolve_core_schema(cls: type) -> None:
    """Makes a loader read, or a dumper quote, plain scalars as YAML 1.2's core schema types them."""
    for kind, (pattern, first, _) in CORE_SCHEMA.items():
        cls.add_implicit_resolver(f"tag:yaml.org,2002:{kind}", re.compile(f"^(?:{pattern})$", re.VERBOSE), list(first))


_resolve_core_schema(_StrictLoader)
for _kind, (_pattern, _first, _convert) in CORE_SCHEMA.items():
    _StrictLoader.add_constructor(f"tag:yaml.org,2002:{_kind}", _core_scalar(_kind, _pattern, _convert))
for _tag in REFUSED_TAGS:
    _StrictLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


class _QuotingDumper(yaml.SafeDumper):
    """Writes strings that YAML 1.2 (or 1.1) would read as another type quoted ("1e5", "0x1f", "yes"), so a job
    written by the framework reads back as the same job."""


_resolve_core_schema(_QuotingDumper)


def dump_yaml(tree: Any) -> str:
    """`tree` as YAML that the job loader reads back unchanged."""
    return yaml.dump(tree, Dumper=_QuotingDumper, sort_keys=False, allow_unicode=True)


def parse_yaml(text: str) -> Any:
    """A YAML document, read with _StrictLoader; a UserError (one line) for anything it cannot or will not read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # undecodable bytes of a command line, which Python keeps as surrogates
        raise UserError(f"not UTF-8 text (character {err.start + 1})") from None
    try:
        check_nesting(text)
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        if "maximum nesting depth" in str(err):  # libyaml's own limit, met while it scans ahead of check_nesting
            raise UserError(f"line {err.problem_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels") from None
        raise UserError(f"not valid YAML: {printable(' '.join(str(err).split()), 2 * MAX_ECHO_CHARS)}") from None
    count, depth = measure(raw, MAX_YAML_VALUES)
    if count > MAX_YAML_VALUES:
        raise UserError(f"expands to more than {MAX_YAML_VALUES:,} values (YAML aliases?); refused")
    if depth > MAX_YAML_DEPTH:
        raise UserError(f"nested deeper than {MAX_YAML_DEPTH} levels (YAML aliases?); refused")
    return raw


def check_nesting(text: str) -> None:
    """Refuses nesting deeper than MAX_YAML_DEPTH before anything is composed (composing, and later copying, nested
    values is recursive: too deep a document would exhaust Python's stack)."""
    depth = 0
    for event in yaml.parse(text, Loader=_StrictLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise UserError(f"line {event.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def measure(node: Any, limit: int) -> tuple[int, int]:
    """Values in a loaded document and how deep they nest, stopped past `limit` values (an alias bomb never
    finishes counting)."""
    count, deepest, stack = 0, 0, [(node, 1)]
    while stack and count <= limit:
        item, depth = stack.pop()
        count, deepest = count + 1, max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)
    return count, deepest


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A file's YAML mapping, read safely: no python tags, no duplicate keys, no alias bombs, no deep nesting,
    UTF-8 only."""
    if CONTROL_CHARACTERS.search(str(path)):
        raise UserError(f"{printable(repr(str(path)))}: a file path cannot hold control characters (NUL, newline...)")
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not a YAML file")
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{printable(str(path))}: cannot be read ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} on line {line})") from None
    if not text.strip() or all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines()):
        raise UserError(f"{path}: the file is empty")
    try:
        raw = parse_yaml(text)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level (got a {type(raw).__name__})")
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw['a']['b']['c'] = value for key `a.b.c`, creating sections on the way."""
    if key.count(".") >= MAX_YAML_DEPTH:
        raise UserError(f"nested deeper than {MAX_YAML_DEPTH} levels")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{printable(key)}: {printable(part)} is not a section")
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
            raise UserError(f"--set {printable(item)}: expected dotted.key=value")
        try:
            set_key(raw, key, parse_yaml(value))
        except UserError as err:
            raise UserError(f"--set {printable(key)}: {err}") from None
    return raw


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: `section.field: what is wrong (got X)`; X cut short, and never the value of a field
    named like a secret."""
    lines = []
    for problem in err.errors():
        location = ".".join(printable(str(part)) for part in problem["loc"] if not _is_union_tag(part))
        message = problem["msg"].removeprefix("Value error, ")
        message = message.replace("Input should be", "must be").replace("should have", "must have").replace("Extra inputs are not permitted", "unknown key")
        if problem["type"] == "value_error":
            # Cross-field checks name their own field, relative to the section that ran them.
            field, _, message = message.partition(": ")
            location = f"{location}.{field}" if location else field
        elif problem["type"] == "union_tag_invalid":  # a schedule name that no schedule has
            context = problem["ctx"]
            location = f"{location}.{context['discriminator'].strip(chr(39))}"
            message = f"must be one of {context['expected_tags']} (got {context['tag']!r})"
        elif problem["type"] not in ("missing", "extra_forbidden") and not any(is_secret_name(str(part)) for part in problem["loc"]):
            message += f" (got {printable(repr(problem['input']))})"
        lines.append(f"{location}: {printable(message, 2 * MAX_ECHO_CHARS)}")
    return "\n".join(lines)


def _is_union_tag(part) -> bool:
    # Pydantic puts the chosen schedule's name into the location; the user never wrote it.
    return part in SCHEDULE_NAMES


def validate(raw: dict[str, Any], model: type[BaseModel] = JobConfig):
    """The validated model, or a UserError in which the values of raw's secret-named keys are masked."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(redact_text(format_validation_error(err), raw)) from None


def in_file(path: str | Path, err: UserError) -> UserError:
    """The error with the file it is about in front of each of its lines."""
    return UserError("\n".join(f"{path}: {line}" for line in str(err).splitlines()))


def load_job(path: str | Path, overrides: list[str] = (), raw: dict[str, Any] | None = None) -> JobConfig:
    """The job of the file at `path` with `overrides`; `raw`: the file's mapping where the caller has read it."""
    raw = with_shared_storage(apply_overrides(read_yaml(path) if raw is None else raw, list(overrides)))
    try:
        return validate(raw)
    except UserError as err:
        raise in_file(path, err) from None


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
    base_path: Path  # the base job file
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


def load_sweep(path: str | Path, overrides: list[str] = (), raw: dict[str, Any] | None = None) -> LoadedSweep:
    """The sweep of the file at `path`, its base job with `overrides` (--set) applied after the sweep's own; `raw`:
    the file's mapping where the caller has read it."""
    path = Path(path)
    try:
        config = validate(read_yaml(path) if raw is None else raw, SweepConfig)
    except UserError as err:
        raise in_file(path, err) from None
    base_path = (path.parent / expand_path(config.base)).resolve()
    base_raw = read_yaml(base_path)
    for key, value in config.overrides.items():
        if not is_job_key(JobConfig, key):
            raise UserError(f"{path}: overrides.{printable(key)}: not a key of the job (see: orchestrator schema)")
        set_key(base_raw, key, value)
    with_shared_storage(apply_overrides(base_raw, list(overrides)))
    try:
        base_job = validate(base_raw)
    except UserError as err:
        raise in_file(base_path, err) from None
    try:
        sweep = LoadedSweep(path, config, config.name or file_name(path, instead="name"), base_path, base_raw, base_job)
        check_sweep(sweep)
    except UserError as err:
        raise in_file(path, err) from None
    return sweep


def check_sweep(sweep: LoadedSweep) -> None:
    """What the sweep schema cannot check alone: the searched keys and the metric against the base job."""
    config, job = sweep.config, sweep.base_job
    for key, distribution in config.search_space.items():
        if not is_job_key(JobConfig, key):
            raise UserError(f"search_space.{printable(key)}: not a key of the job (see: orchestrator schema)")
        for value in distribution.extremes():
            try:
                sweep.trial_job({key: value})
            except UserError as err:
                raise UserError(f"search_space.{printable(key)}: {printable(repr(value))} makes the job invalid: {str(err).splitlines()[0]}") from None
    if not job.train.eval_every:
        raise UserError("train.eval_every: trials report their results to Tune when they evaluate; set it")
    reported = TASKS[job.task].reported_metrics
    if config.metric not in reported:
        raise UserError(f"metric: the {job.task} task reports {', '.join(reported)} (got {printable(repr(config.metric))})")
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
            raise UserError(f"scheduler.perturbation_interval: {interval} is not a multiple of train.eval_every ({job.train.eval_every})")
