"""Names that become MLflow identifiers and directory names: runs, experiments, registered models and sweeps.

One rule for all of them, one both MLflow and every file system (and object store) take as it is: ASCII letters,
digits, '.', '_' and '-', starting with a letter or digit, at most MAX_NAME_LENGTH characters. So a name is never
empty, '.', '..', hidden, an option (-x), never holds '/' or ':' (MLflow refuses those in a registered model) or a
control character, and always fits MLflow's 250-character run names and a file system's 255-byte file names.

Names in job and sweep files are checked by the `Name` type at validation. Names the framework derives at run time
(a run named after its job file and the time, a sweep after its file, a trial after its sweep) go through
`checked_name` / `derived_name`: a file whose name breaks the rule is refused, naming the file and the key that
names it instead; it is not rewritten, since two files would then silently share one run or sweep.

Tag keys and values follow MLflow's own rules (mlflow/utils/validation.py, replicated here: importing MLflow takes
over a second, and validation must not).
"""

import posixpath
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from orchestrator.config.errors import UserError, printable

MAX_NAME_LENGTH = 250  # MLflow's runs.name column; a file name may take 255 bytes
NAME_RULE = f"ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, at most {MAX_NAME_LENGTH} characters"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

MAX_TAG_KEY_LENGTH = 250  # mlflow MAX_ENTITY_KEY_LENGTH
MAX_TAG_VALUE_LENGTH = 8000  # mlflow MAX_TAG_VAL_LENGTH (longer values are cut or refused, depending on its settings)
_TAG_KEY = re.compile(r"[/\w.\- :]*")  # mlflow validate_param_and_metric_name, outside Windows
RESERVED_TAG_KEYS = {"mlflow.runName": "tracking.run_name names the run"}  # MLflow fails a run whose tag and name differ


def name_problem(value: str) -> str | None:
    """What is wrong with `value` as a name, or None."""
    if len(value) > MAX_NAME_LENGTH:  # first: the pattern need not run over a huge value
        return f"a name has at most {MAX_NAME_LENGTH} characters ({len(value)} given)"
    if not _NAME.fullmatch(value):
        return f"a name is {NAME_RULE}"
    return None


def _valid_name(value: str) -> str:
    if problem := name_problem(value):
        raise PydanticCustomError("name", problem)
    return value


Name = Annotated[str, AfterValidator(_valid_name)]


def checked_name(value: str, what: str) -> str:
    """`value` if it is a valid name; else a UserError starting with `what` (the field or file it came from)."""
    if problem := name_problem(value):
        raise UserError(f"{what}: {printable(repr(value))} cannot be used as a name: {problem}")
    return value


def file_name(path: str | Path, instead: str) -> str:
    """A file's name without its extension as the default name of what it describes; `instead` is the key that
    names it explicitly, offered when the file's name is not a valid name."""
    stem = Path(path).stem
    if problem := name_problem(stem):
        raise UserError(f"{path}: the file's name {printable(repr(stem))} cannot name a run or sweep ({problem}); set {instead}")
    return stem


def derived_name(base: str, suffix: str) -> str:
    """`base` (a valid name) with `suffix` after it, e.g. a timestamp or a trial id; base is cut where the whole would
    be too long (the suffix keeps such names apart)."""
    return checked_name(base[: MAX_NAME_LENGTH - len(suffix)] + suffix, "derived name")


def tag_problem(tags: dict[str, str]) -> str | None:
    """What MLflow would refuse in `tags` ({key: value}), or None. Values are never shown: they may be secrets."""
    for key, value in tags.items():
        if len(key) > MAX_TAG_KEY_LENGTH:
            return f"a key has at most {MAX_TAG_KEY_LENGTH} characters ({len(key)} given)"
        if not _TAG_KEY.fullmatch(key):
            return f"key {printable(repr(key))}: MLflow takes letters, digits, '_', '-', '.', ' ', ':' and '/' only"
        if posixpath.normpath(key) != key or key == "." or key.startswith(("..", "/")):  # MLflow: keys may become paths
            return f"key {printable(repr(key))}: MLflow takes only a normalized relative path (not empty, '.', '..', '//', '/' at an end)"
        if key in RESERVED_TAG_KEYS:
            return f"key {key!r} is set by orchestrator ({RESERVED_TAG_KEYS[key]})"
        if len(value) > MAX_TAG_VALUE_LENGTH:
            return f"the value of {printable(repr(key))} has {len(value)} characters; MLflow keeps at most {MAX_TAG_VALUE_LENGTH}"
    return None
