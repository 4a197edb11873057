"""Hypothesis strategies for job files, sweep files and `--set` values, and the harness that runs one case through the
real CLI entry point in this process (tests/unit/test_fuzz_inputs.py).

Valid documents are generated from the pydantic schema (its fields, types and bounds), then mutated the ways a
hostile or careless user would: wrong types, numbers past every bound, YAML 1.1 traps, control characters, huge
strings, deep nesting, aliases, unknown keys, and secrets planted where an error message might quote them.
"""

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import types
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from helpers import HARD_STOP_S, Outcome, run_cli
from hypothesis import strategies as st
from pydantic import BaseModel

from orchestrator.config.job import TASK_DATA_KEYS, JobConfig
from orchestrator.config.sweep import SweepConfig
from orchestrator.models.tasks import TASKS

SECONDS_ALLOWED = 2.0  # the bound for one case
MAX_ERROR_CHARS = 4096  # "bounded length": a long value must be cut, not echoed whole


# --- the schema, walked ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leaf:
    """One key a user can write: its path and what the schema says it takes."""

    path: tuple[str, ...]
    kind: str  # bool, int, float, literal, str, str_list, str_dict, any_dict, float_pair, other
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    optional: bool = False

    @property
    def key(self) -> str:
        return ".".join(self.path)


def _section(annotation) -> list[type[BaseModel]]:
    """The pydantic sections an annotation holds (a section, an optional one, or a union of them)."""
    members = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]


def _is_union(annotation) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _describe(path: tuple[str, ...], annotation, metadata: list) -> Leaf:
    optional = False
    if _is_union(annotation):
        members = [m for m in typing.get_args(annotation) if m is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0] if len(members) == 1 else annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata = [*metadata, *extra]
    bounds = {}
    for item in metadata:
        for name in ("gt", "ge", "lt", "le"):
            if isinstance(item, annotated_types.BaseMetadata) and getattr(item, name, None) is not None:
                bounds[name] = getattr(item, name)
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    low_open, high_open = "ge" not in bounds and "gt" in bounds, "le" not in bounds and "lt" in bounds
    common = {"low": low, "high": high, "low_open": low_open, "high_open": high_open, "optional": optional}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is bool:
        return Leaf(path, "bool", optional=optional)
    if annotation in (int, float):
        return Leaf(path, annotation.__name__, **common)
    if origin is typing.Literal:
        return Leaf(path, "literal", choices=args, optional=optional)
    if annotation is str:
        return Leaf(path, "str", optional=optional)
    if origin is list and args == (str,):
        return Leaf(path, "str_list", optional=optional)
    if origin is dict:
        return Leaf(path, "str_dict" if args == (str, str) else "any_dict", optional=optional)
    if origin is tuple and args == (float, float):
        return Leaf(path, "float_pair", optional=optional)
    return Leaf(path, "other", optional=optional)


def schema_leaves(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[Leaf]:
    """Every leaf key of a schema; the members of a union of sections (the schedules) merged, their names one
    literal."""
    leaves: dict[tuple[str, ...], Leaf] = {}
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        sections = _section(info.annotation)
        if not sections:
            leaves[path] = _describe(path, info.annotation, list(info.metadata))
            continue
        for section in sections:
            for leaf in schema_leaves(section, path):
                known = leaves.get(leaf.path)
                if known is None:
                    leaves[leaf.path] = leaf
                elif known.kind == leaf.kind == "literal":  # the schedules' names
                    leaves[leaf.path] = dataclasses.replace(known, choices=tuple(dict.fromkeys(known.choices + leaf.choices)))
    return list(leaves.values())


def schema_sections(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The paths of every section (nested mapping) of a schema, the top level included."""
    found = [prefix]
    for name, info in model.model_fields.items():
        for section in _section(info.annotation)[:1]:
            found += schema_sections(section, (*prefix, name))
    return found


JOB_LEAVES = schema_leaves(JobConfig)
JOB_SECTIONS = schema_sections(JobConfig)
SWEEP_LEAVES = schema_leaves(SweepConfig)
SWEEP_SECTIONS = schema_sections(SweepConfig)


# --- documents: values, raw YAML, planted secrets -----------------------------------------------------------------


_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's: PyYAML's own emitter is 3x slower
MAX_WIDTH = 2**31 - 1  # no line folding (libyaml takes an int)


@dataclass(repr=False)
class Doc:
    """A YAML document under construction: a tree of plain values, where a placeholder string stands for raw YAML
    text (a YAML 1.1 trap, an alias, a tag, an escape) that a dumper would quote, and the secrets planted in it."""

    tree: dict
    raw: dict[str, str] = field(default_factory=dict)
    raw_keys: set[str] = field(default_factory=set)
    secrets: set[str] = field(default_factory=set)

    def raw_value(self, text: str) -> str:
        placeholder = f"RAWYAML{len(self.raw):04d}X"
        self.raw[placeholder] = text
        return placeholder

    def __repr__(self) -> str:
        """The YAML as written (long lines cut), which is what a failing case is about."""
        lines = [line if len(line) <= 200 else f"{line[:200]}... ({len(line):,} characters)" for line in self.text().splitlines()]
        return "Doc(\n" + "\n".join(lines) + f"\n, secrets={sorted(self.secrets)})"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis prints a failing case's draws with this
        printer.text(repr(self))

    def raw_key(self, text: str) -> str:
        """A key written as raw YAML text, as an explicit `? key` (an implicit key may not pass 1,024 characters)."""
        placeholder = self.raw_value(text)
        self.raw_keys.add(placeholder)
        return placeholder

    def text(self) -> str:
        out = yaml.dump(self.tree, Dumper=_SafeDumper, sort_keys=False, width=MAX_WIDTH)
        for placeholder, text in self.raw.items():
            if placeholder in self.raw_keys:
                out = re.sub(rf"^([ -]*){placeholder}:", functools.partial(_explicit_key, text), out, flags=re.MULTILINE)
            else:
                out = out.replace(placeholder, text)
        return out


def _explicit_key(key: str, match: re.Match) -> str:
    indent = match[1]  # spaces, or the "- " of a list item
    return f"{indent}? {key}\n{' ' * len(indent)}:"


def quoted(text: str) -> str:
    """Text as a double-quoted YAML scalar, built in linear time (PyYAML's emitter takes seconds for a megabyte)."""
    return '"' + json.dumps(text, ensure_ascii=False)[1:-1] + '"'


def get_at(tree: Any, path: tuple[str, ...]) -> Any:
    """The value at `path`; None where the path leads nowhere."""
    try:
        return functools.reduce(lambda node, part: node[part], path, tree)
    except (KeyError, TypeError):  # a missing key; a value that is not a mapping
        return None


def set_at(tree: dict, path: tuple[str, ...], value: Any) -> bool:
    """tree[a][b][c] = value, creating sections; False where a part on the way is not a mapping."""
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            return False
    if not isinstance(node, dict):
        return False
    node[path[-1]] = value
    return True


def delete_at(tree: dict, path: tuple[str, ...]) -> None:
    parent = get_at(tree, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


@dataclass(frozen=True)
class World:
    """The case's sandbox: a small real corpus, and HOME and the cwd inside the tree that is watched."""

    root: Path
    corpus: Path
    home: Path
    cwd: Path


# A letter first: PyYAML's dumper writes "0E0" unquoted (no float in YAML 1.1), which YAML 1.2's core schema reads as one
NAME = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,30}", fullmatch=True)


@functools.cache  # one strategy per leaf: Hypothesis validates each new strategy object on its first draw
def valid_value(leaf: Leaf, world: World) -> st.SearchStrategy:
    """A value the leaf's own declaration accepts, in a practical range (cross-field checks may still refuse it)."""
    special = {
        "data.paths": st.just([str(world.corpus)]),
        "data.format": st.sampled_from(["auto", "jsonl"]),  # the corpus is JSON lines
        "data.cache_dir": st.sampled_from(["cache", "~/.cache/orchestrator/datasets", str(world.root / "cache")]),
        "checkpoint.dir": st.sampled_from(["runs", "~/orchestrator/runs", str(world.root / "runs")]),
        "data.text_field": st.just("text"),
        "data.labels": st.none() | st.lists(NAME, min_size=2, max_size=4, unique=True),
        "data.tokenizer.path": st.none(),
        "model.pretrained": st.none(),
        "tracking.uri": st.sampled_from([None, "sqlite:///mlflow.db", "http://127.0.0.1:5000"]),
        "deepspeed.extra": st.sampled_from([{}, {"wall_clock_breakdown": False}, {"steps_per_print": 100}]),
    }
    if leaf.key in special:
        return special[leaf.key]
    if leaf.kind == "bool":
        value = st.booleans()
    elif leaf.kind == "literal":
        value = st.sampled_from(leaf.choices)
    elif leaf.kind == "int":
        low = 0 if leaf.low is None else int(leaf.low) + leaf.low_open
        high = low + 1000 if leaf.high is None else int(leaf.high) - leaf.high_open
        value = st.integers(low, min(high, low + 1000))
    elif leaf.kind == "float":
        low = 0.0 if leaf.low is None else float(leaf.low)
        high = low + 10.0 if leaf.high is None else float(leaf.high)
        value = st.floats(low, high, exclude_min=leaf.low_open, exclude_max=leaf.high_open, allow_subnormal=False)
    elif leaf.kind == "str":
        value = NAME
    elif leaf.kind == "str_list":
        value = st.lists(NAME, min_size=1, max_size=3)
    elif leaf.kind == "str_dict":
        value = st.dictionaries(NAME, NAME, max_size=3)
    elif leaf.kind == "float_pair":
        value = st.tuples(st.floats(0, 0.99), st.floats(0, 0.9999)).map(list)
    else:
        value = st.nothing()
    return st.none() | value if leaf.optional else value


# Leaves set apart from the generic draw: their values come with the task, or point at files the case needs.
TASK_FIELDS = {"task", "model.family", "data.paths", *(f"data.{name}" for name in TASK_DATA_KEYS)}
TUNABLE_JOB_LEAVES = [leaf for leaf in JOB_LEAVES if leaf.kind != "other" and leaf.key not in TASK_FIELDS]


def base_job(task: str, family: str, world: World) -> dict:
    """The smallest valid job of a task: it validates against the sandbox's corpus."""
    data = {"paths": [str(world.corpus)], "cache_dir": str(world.root / "cache"), "seq_len": 64}
    data |= {name: name.removesuffix("_field") for name in (*TASKS[task].needs_fields, *TASKS[task].needs_one_of[:1])}
    return {
        "task": task,
        "model": {"family": family, "size": "tiny"},
        "data": data,
        "train": {"max_steps": 20, "eval_every": 10},
        "checkpoint": {"dir": str(world.root / "runs")},
    }


# Strategies are built once, here, not in each draw: Hypothesis validates every new strategy object on first use.
TASK_NAMES = st.sampled_from(sorted(TASKS))


@functools.cache
def tunable_leaves(max_changes: int) -> st.SearchStrategy[list[Leaf]]:
    return st.lists(st.sampled_from(TUNABLE_JOB_LEAVES), max_size=max_changes, unique_by=lambda leaf: leaf.key)


@st.composite
def job_docs(draw, world: World, max_changes: int = 4) -> Doc:
    """A job of a random task with up to `max_changes` leaves of the schema set to values their declaration
    accepts."""
    task = draw(TASK_NAMES)
    tree = base_job(task, draw(st.sampled_from(TASKS[task].families)), world)
    for leaf in draw(tunable_leaves(max_changes)):
        set_at(tree, leaf.path, draw(valid_value(leaf, world)))
    return Doc(tree)


def schema_accepts(tree: dict, model: type[BaseModel] = JobConfig) -> bool:
    try:
        model.model_validate(tree)
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return False
    return True


# --- hostile values -----------------------------------------------------------------------------------------------

HUGE_INT = 2**70
NUMBERS = [HUGE_INT, -HUGE_INT, 2**63, 2**31, -1, 0, -0.0, 1e308, -1e308, math.inf, -math.inf, math.nan, 5e-324, 0.5]
# Read by YAML 1.1 as booleans, sexagesimal or octal numbers, dates, nulls; or tags and aliases no job should carry.
RAW_SCALARS = [
    "yes",
    "no",
    "on",
    "off",
    "y",
    "N",
    "12:30",
    "0123",
    "0x1F",
    "0o17",
    "1_000",
    ".inf",
    "-.inf",
    ".NaN",
    "~",
    "2001-12-14",
    "1e308",
    "1e309",
    "=",
    "<<",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!float 1",
    "!!python/object/apply:os.system ['touch PWNED']",
    "!!python/name:os.system",
    "!!str",
    "*undefined",
    "&anchor [1, 2]",
    "&loop [*loop]",
    "[1, [2, [3]]]",
    "{a: 1, a: 2}",
    "{[a, b]: 1}",
    "{? {x: 1}: 2}",
    "[1",
    "{a",
    "'unterminated",
    '"\\x1b[2J\\r\\nerror: forged line"',
    '"\\0nul"',
    '"\\ud800"',
    '"\\u202eevil"',
    '"\\x85\\x9b31m"',
    '"\\e]0;title\\a"',
]
UNICODE = st.sampled_from(
    [
        "\u202e",
        "\u200f",
        "\u2066",
        "\x1b[2J",
        "\x1b[31m",
        "\x1b]8;;http://x\x07",
        "\n",
        "\r",
        "\t",
        "\x07",
        "\x7f",
        "\x85",
        "\x9b",
        "\u2028",
        "\ufeff",
        "😀",
        "é",
        "ß",
        "ﬁ",
        "\u0301",
        "𝔘",
        "a",
    ]
)
HOSTILE_TEXT = st.lists(st.one_of(UNICODE, st.text(max_size=8)), max_size=6).map("".join)


@st.composite
def long_text(draw) -> str:
    """Up to a megabyte: cheap to build (a repeated unit), costly only for code that is not linear in it. Escape
    sequences stop at 100 KB: PyYAML alone takes about 2 s to read a megabyte of them."""
    unit = draw(st.sampled_from(["a", "é", "\u202e", "😀", "a/", "a:", "x@", "http://", "\x1b["]))
    sizes = [1_000, 10_000, 100_000] + ([1_000_000] if unit.isprintable() else [])
    return unit * (draw(st.sampled_from(sizes)) // len(unit))


def nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else "{a: " * depth + "1" + "}" * depth


@st.composite
def hostile_value(draw, doc: Doc) -> Any:
    """A value to put where the schema expects something else, or something sane."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.sampled_from(NUMBERS))
    if choice == 1:
        return doc.raw_value(draw(st.sampled_from(RAW_SCALARS)))
    if choice == 2:
        return draw(HOSTILE_TEXT)
    if choice == 3:
        return doc.raw_value(quoted(draw(long_text())))
    if choice == 4:
        return doc.raw_value(nested(draw(st.sampled_from([10, 100, 1_000, 10_000])), draw(st.sampled_from(["list", "dict"]))))
    if choice == 5:
        return draw(st.sampled_from([[], {}, [1, "a"], {"x": 1}, None, True, False, "", " ", [[[]]]]))
    if choice == 6:
        return draw(secret_value(doc))
    if choice == 7:
        return draw(st.integers() | st.floats())
    if choice == 8:
        return draw(st.lists(HOSTILE_TEXT, max_size=3))
    return draw(st.text(max_size=30))


# --- secrets ------------------------------------------------------------------------------------------------------

SECRET_NAMES = ["api_token", "password", "GITHUB_TOKEN", "secret", "db-password", "aws_secret_access_key", "authorization"]
TOKEN = st.from_regex(r"[A-Za-z0-9]{14}", fullmatch=True).map(lambda body: f"Zq{body}")  # Zq: never in a message
TWO_TOKENS = st.lists(TOKEN, min_size=2, max_size=2, unique=True)


@st.composite
def secret_value(draw, doc: Doc) -> str:
    """A string carrying a secret in URL userinfo, of the forms that are easy to half-mask."""
    user = draw(st.sampled_from(["alice", "ci-bot", "svc"]))  # a user name is no secret
    first, second = draw(TWO_TOKENS)
    form = draw(st.sampled_from(["password", "password_with_at", "token_only", "in_text"]))
    if form == "password":
        doc.secrets.add(first)
        return f"https://{user}:{first}@db.example.com:5432/x"
    if form == "password_with_at":
        doc.secrets |= {first, second}
        return f"postgresql://{user}:{first}@{second}@db.example.com/x"
    if form == "token_only":
        doc.secrets.add(first)
        return f"https://{first}@github.com/org/repo.git"
    doc.secrets.add(first)
    return f"see mysql://{user}:{first}@host/db for details"


def holds_secret(doc: Doc, path: tuple[str, ...]) -> bool:
    """Whether the value at `path` carries a secret planted before: planting over it would drop that secret from the
    document but not from `doc.secrets`, and the value that replaced it, quoted, would count as a leak."""
    value = get_at(doc.tree, path)
    return value is not None and any(secret in str(value) for secret in doc.secrets)


@st.composite
def plant_secret(draw, doc: Doc) -> None:
    """A secret where a message might quote it: a secret-named tag (as a string, or wrapped so that it is the wrong
    type, or its value also given to another field), a secret-named key in any section, or a URL with credentials
    in any field."""
    token = draw(TOKEN)
    where = draw(st.sampled_from(["tag", "tag_wrapped", "tag_reused", "section_key", "url_in_field"]))
    if where == "url_in_field":
        leaf = draw(st.sampled_from(JOB_LEAVES))
        if not holds_secret(doc, leaf.path):
            set_at(doc.tree, leaf.path, draw(secret_value(doc)))
        return
    name = draw(st.sampled_from(SECRET_NAMES))
    tag = ("tracking", "tags", name)
    if where == "tag":
        planted = not holds_secret(doc, tag) and set_at(doc.tree, tag, token)
    elif where == "tag_wrapped":
        wrapped = draw(st.sampled_from([[token], {"value": token}, f"{token}\n"]))
        planted = not holds_secret(doc, tag) and set_at(doc.tree, tag, wrapped)
    elif where == "tag_reused":  # a secret's value is secret wherever else it is written
        leaf = draw(st.sampled_from(JOB_LEAVES)).path
        # not tracking.tags itself: the token written over the tags would no longer be a secret-named key's value
        planted = tag[: len(leaf)] != leaf and not holds_secret(doc, leaf) and not holds_secret(doc, tag) and set_at(doc.tree, tag, token)
        if planted:
            set_at(doc.tree, leaf, token)
    else:
        key = (*draw(st.sampled_from(JOB_SECTIONS)), name)
        planted = not holds_secret(doc, key) and set_at(doc.tree, key, token)
    if planted:  # a value is a secret while a secret-named key holds it
        doc.secrets.add(token)


# --- mutations ----------------------------------------------------------------------------------------------------


def tree_paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path in a document, mappings and leaves alike."""
    paths = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            if isinstance(key, str):
                paths.append((*prefix, key))
                paths += tree_paths(value, (*prefix, key))
    return paths


MUTATIONS = st.lists(st.sampled_from(["replace", "replace", "replace", "delete", "unknown_key", "secret", "alias"]), min_size=1, max_size=3)


@st.composite
def mutate(draw, doc: Doc, leaves: list[Leaf], sections: list[tuple]) -> Doc:
    """One to three mutations: a hostile value at a schema key or a path of the document, a key removed, an unknown
    key (with escapes and newlines in it), a secret planted, a value aliased from elsewhere."""
    kinds = draw(MUTATIONS)
    # Secrets last: a later mutation could remove the secret-named key and leave its value as an ordinary word.
    for kind in sorted(kinds, key=lambda kind: kind == "secret"):
        existing = tree_paths(doc.tree)
        if kind == "replace":
            paths = [leaf.path for leaf in leaves] + sections[1:] + existing
            set_at(doc.tree, draw(st.sampled_from(paths)), draw(hostile_value(doc)))
        elif kind == "delete" and existing:
            delete_at(doc.tree, draw(st.sampled_from(existing)))
        elif kind == "unknown_key":
            key = draw(st.one_of(HOSTILE_TEXT.filter(bool), long_text().map(quoted).map(doc.raw_key), st.sampled_from(["<<", "?", "-", "a.b", "1"])))
            set_at(doc.tree, (*draw(st.sampled_from(sections)), key), draw(hostile_value(doc)))
        elif kind == "secret":
            draw(plant_secret(doc))
        elif kind == "alias" and existing:
            # An anchored node and an alias to it elsewhere: legal YAML that makes two keys one node.
            source, target = draw(st.sampled_from(existing)), draw(st.sampled_from(existing))
            if source[: len(target)] != target and target[: len(source)] != source:
                anchored = json.dumps(get_at(doc.tree, source))  # JSON is YAML flow style: one line
                set_at(doc.tree, source, doc.raw_value(f"&fuzzanchor {anchored}"))
                set_at(doc.tree, target, doc.raw_value("*fuzzanchor"))
    return doc


@st.composite
def mutated_job_docs(draw, world: World) -> Doc:
    return draw(mutate(draw(job_docs(world, max_changes=2)), JOB_LEAVES, JOB_SECTIONS))


# --- sweeps -------------------------------------------------------------------------------------------------------

# Searched keys whose valid values never clash with the rest of the base job, so any distribution over values the
# leaf accepts gives valid trials (ranges are checked at their ends).
SEARCHED = {
    leaf.key: leaf
    for leaf in JOB_LEAVES
    if leaf.key
    in {
        "train.optimizer.lr",
        "train.optimizer.weight_decay",
        "train.grad_clip",
        "train.micro_batch_size",
        "train.grad_accum_steps",
        "train.seed",
        "model.dropout",
        "train.log_every",
    }
}


@st.composite
def distribution(draw, leaf: Leaf, kinds: list[str], world: World) -> dict:
    values = valid_value(dataclasses.replace(leaf, optional=False), world)
    numeric = leaf.kind in ("int", "float")
    usable = [kind for kind in kinds if kind in ("choice", "grid") or (numeric and (kind != "randint" or leaf.kind == "int"))]
    if leaf.kind == "int":
        usable = [kind for kind in usable if kind not in ("uniform", "loguniform", "quniform")]
    kind = draw(st.sampled_from(usable))
    if kind in ("choice", "grid"):
        return {kind: draw(st.lists(values, min_size=1, max_size=4))}
    low, high = sorted(draw(st.lists(values, min_size=2, max_size=2, unique=True)))
    if kind == "randint":
        return {"randint": [low, high + 1]}
    if kind == "loguniform":
        low = max(low, 1e-6)
        if not low < high:
            high = low * 10 if leaf.high is None or low * 10 < leaf.high else (low + leaf.high) / 2
    if kind == "quniform":
        return {"quniform": [low, high, (high - low) / draw(st.integers(1, 10))]}
    return {kind: [low, high]}


KINDS_OF_SEARCH = {
    "random": ["choice", "grid", "uniform", "loguniform", "randint", "quniform"],
    "grid": ["choice", "grid"],
    "optuna": ["choice", "uniform", "loguniform", "randint", "quniform"],
    "hyperopt": ["choice", "uniform", "loguniform", "randint", "quniform"],
    "bayesopt": ["uniform"],
}
SEARCH_NAMES = st.sampled_from(sorted(KINDS_OF_SEARCH))
SEARCHED_KEYS = {  # bayesopt searches continuous ranges only
    search: st.lists(
        st.sampled_from([leaf for leaf in SEARCHED.values() if search != "bayesopt" or leaf.kind == "float"]),
        min_size=1,
        max_size=3,
        unique_by=lambda leaf: leaf.key,
    )
    for search in KINDS_OF_SEARCH
}
SWEEP_SETTINGS = st.lists(st.sampled_from([leaf for leaf in SWEEP_LEAVES if leaf.key in ("max_concurrent_trials", "time_budget_s", "seed")]), max_size=2)


@st.composite
def sweep_docs(draw, world: World) -> tuple[Doc, Doc]:
    """A valid sweep file and its base job (written beside it as job.yaml)."""
    task = draw(TASK_NAMES)
    job = Doc(base_job(task, draw(st.sampled_from(TASKS[task].families)), world))
    search = draw(SEARCH_NAMES)
    keys = draw(SEARCHED_KEYS[search])
    tree = {
        "base": "job.yaml",
        "search_space": {leaf.key: draw(distribution(leaf, KINDS_OF_SEARCH[search], world)) for leaf in keys},
        "search": {"name": search},
        "metric": draw(st.sampled_from(TASKS[task].reported_metrics)),
        "mode": draw(st.sampled_from(["min", "max"])),
        "num_samples": draw(st.integers(1, 8)),
    }
    if draw(st.booleans()):
        tree["name"] = draw(NAME)
    if draw(st.booleans()):
        tree["scheduler"] = draw(st.sampled_from([{"name": "fifo"}, {"name": "asha", "grace_period": 5, "reduction_factor": 3}]))
    if draw(st.booleans()):
        tree["overrides"] = {"train.max_steps": draw(st.integers(10, 40))}
    for leaf in draw(SWEEP_SETTINGS):
        tree[leaf.key] = draw(valid_value(dataclasses.replace(leaf, optional=False), world))
    return Doc(tree), job


@st.composite
def mutated_sweep_docs(draw, world: World) -> tuple[Doc, Doc]:
    sweep, job = draw(sweep_docs(world))
    if draw(st.integers(0, 3)) == 0:
        return sweep, draw(mutate(job, JOB_LEAVES, JOB_SECTIONS))
    return draw(mutate(sweep, SWEEP_LEAVES, SWEEP_SECTIONS)), job


# --- --set overrides ----------------------------------------------------------------------------------------------

SET_VALUES = st.one_of(
    st.sampled_from(RAW_SCALARS),
    st.sampled_from(["[1", "\t", "a\tb", "!!python/name:os.system", "{a: *b}", "&a [*a]", "''", "-", "--help", "null"]),
    HOSTILE_TEXT.map(lambda text: text.replace("\x00", "")),  # argv cannot carry NUL
    st.sampled_from([100, 10_000, 100_000]).map(lambda size: "a" * size),
    st.sampled_from([str(HUGE_INT), "1e308", "-1e308", "nan", ".nan", "5e-324", "-0"]),
    st.sampled_from(["\udcff", "a\udc80b"]),  # undecodable bytes in argv arrive as lone surrogates
)
SET_KEYS = st.one_of(
    st.sampled_from([leaf.key for leaf in JOB_LEAVES]),
    st.sampled_from(["train", "model.dims", "", ".", "..", "a..b", "train.", ".train", "train.max_steps.x", "data.paths.0"]),
    HOSTILE_TEXT.map(lambda text: text.replace("\x00", "").replace("=", "")),
    st.just("k" * 10_000),
)


@st.composite
def set_overrides(draw, doc: Doc) -> list[str]:
    """`--set key=value` items: schema keys and junk keys, hostile values and secrets."""
    items = []
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.integers(0, 4)) == 0:
            token = draw(TOKEN)
            doc.secrets.add(token)
            items.append(f"tracking.tags.{draw(st.sampled_from(SECRET_NAMES))}={token}")
        elif draw(st.integers(0, 4)) == 0:
            items.append(f"{draw(SET_KEYS)}={draw(secret_value(doc))}")
        elif draw(st.integers(0, 9)) == 0:
            items.append(draw(SET_KEYS))  # no '='
        else:
            items.append(f"{draw(SET_KEYS)}={draw(SET_VALUES)}")
    return items


# --- running one case ---------------------------------------------------------------------------------------------


def snapshot(root: Path) -> set[str]:
    """Every file and directory under root."""
    found = set()
    for directory, subdirs, files in os.walk(root):
        found.update(os.path.join(directory, name) for name in subdirs + files)
    return found


def control_characters(text: str) -> list[str]:
    """Raw C0/C1 control characters (and DEL) in text, other than the newline that ends each line."""
    return sorted({repr(char) for char in text if unicodedata.category(char) == "Cc" and char != "\n"})


def check_outcome(outcome: Outcome, secrets: set[str], created: set[str], deleted: set[str], seconds: float = SECONDS_ALLOWED) -> None:
    """The issue's properties of any case; each on its own assert, so Hypothesis reports each kind of failure."""
    output = outcome.stdout + outcome.stderr
    assert not outcome.hung, "hang: stopped by its hard stop"
    assert not outcome.crash, f"traceback: {outcome.crash}"
    assert outcome.code in (0, 2), f"exit code {outcome.code}: {output[:500]!r}"
    assert outcome.cpu_s < seconds, f"slow: {outcome.cpu_s:.2f} s of CPU"
    assert "Traceback" not in output, output[:2000]
    assert not control_characters(output), f"control characters {control_characters(output)} in {output[:300]!r}"
    if outcome.code == 2:
        assert outcome.stderr.startswith("error: ") and outcome.stderr.count("\n") == 1, f"not one line: {outcome.stderr[:500]!r}"
    else:
        assert outcome.stdout.count("\n") == 1 and outcome.stdout.endswith("\n") and not outcome.stderr, output[:500]
    assert len(outcome.stderr) <= MAX_ERROR_CHARS, f"error of {len(outcome.stderr):,} characters"
    leaked = [secret for secret in secrets if secret in output]
    assert not leaked, f"secret {leaked} printed: {output[:500]!r}"
    assert not created, f"files created: {sorted(created)[:5]}"
    assert not deleted, f"files deleted: {sorted(deleted)[:5]}"
    try:
        outcome.stdout.encode("utf-8")
    except UnicodeEncodeError as err:  # the real process's stdout is strict UTF-8: it would die with a traceback
        raise AssertionError(f"stdout cannot be printed: {err}") from None


def case_dir(world: World) -> Path:
    return world.root / "case"


def run_case(world: World, files: dict[str, Doc | str], *args: str, hard_stop_s: float = HARD_STOP_S) -> tuple[Outcome, set[str], set[str]]:
    """Writes the case's files into the sandbox, runs the CLI on them, and returns what it did with the paths it
    created and deleted in the sandbox (HOME and the cwd are in it); the sandbox is then as it was."""
    directory = case_dir(world)
    directory.mkdir(exist_ok=True)  # kept from case to case: making and removing it took longer than the files
    paths = {directory / name: content for name, content in files.items()}
    for path, content in paths.items():
        path.write_text(content.text() if isinstance(content, Doc) else content, encoding="utf-8", errors="surrogatepass")
    before = snapshot(world.root)
    outcome = run_cli(*args, hard_stop_s=hard_stop_s)
    after = snapshot(world.root)
    created, deleted = after - before, before - after
    for path in paths:
        path.unlink(missing_ok=True)
    for path in sorted(created, reverse=True):  # deepest first
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)
    return outcome, created, deleted
