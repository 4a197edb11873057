"""The job file reference in markdown, generated from the config models: every key with its type, default and
description (`orchestrator schema --markdown`; the "Job file reference" of docs/jobs.md is this output, and a test keeps
the two the same)."""

import json
import types
from collections.abc import Iterator
from typing import Annotated, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from orchestrator.config.job import SCHEDULE_CLASSES, JobConfig

CONSTRAINTS = {annotated_types.Gt: ">", annotated_types.Ge: ">=", annotated_types.Lt: "<", annotated_types.Le: "<="}  # type -> sign


def type_text(annotation, metadata: list) -> str:
    """int > 0, one of a / b, list of str, ... or null."""
    if get_origin(annotation) is Annotated:  # PositiveInt inside a union keeps its bound here
        return type_text(annotation.__origin__, [*metadata, *annotation.__metadata__])
    args = get_args(annotation)
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [type_text(arg, metadata) for arg in args if arg is not type(None)]
        return " or ".join(kinds) + (" or null" if type(None) in args else "")
    if get_origin(annotation) is Literal:
        return "one of " + " / ".join(str(arg) for arg in args)
    if get_origin(annotation) in (list, tuple, dict):
        inner = ", ".join(type_text(arg, []) for arg in args if arg is not Ellipsis)
        return {list: f"list of {inner}", tuple: f"[{inner}]", dict: f"map of {inner}"}[get_origin(annotation)]
    name = getattr(annotation, "__name__", str(annotation))
    metadata = [bound for item in metadata for bound in (item.metadata if isinstance(item, FieldInfo) else [item])]
    bounds = [f"{CONSTRAINTS[type(item)]} {getattr(item, type(item).__name__.lower())}" for item in metadata if type(item) in CONSTRAINTS]
    return " ".join([{"Any": "any"}.get(name, name), *bounds])


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return ""  # a section: its keys follow
    return "`" + json.dumps(default.model_dump() if isinstance(default, BaseModel) else default, default=list) + "`"


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sections = [arg for arg in (get_args(field.annotation) or (field.annotation,)) if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if key == "train.schedule":  # one of several schedules, told apart by name: each key says whose it is
            yield key, "section", '`{"name": "constant"}`', "Learning-rate schedule; its `name` picks the keys below."
            yield from schedule_rows(key + ".")
        elif sections:
            yield key, "section", default_text(field), field.description or ""
            yield from rows(sections[0], key + ".")
        else:
            yield key, type_text(field.annotation, field.metadata), default_text(field), field.description or ""


def schedule_rows(prefix: str) -> Iterator[tuple[str, str, str, str]]:
    """`name`, then each other schedule key once, naming the schedules that have it."""
    yield f"{prefix}name", "one of " + " / ".join(SCHEDULE_CLASSES), '`"constant"`', "The schedule."
    owners: dict[str, list[str]] = {}
    first: dict[str, tuple[str, str, str, str]] = {}
    for schedule, model in SCHEDULE_CLASSES.items():
        for row in rows(model, prefix):
            if row[0] != f"{prefix}name":
                owners.setdefault(row[0], []).append(schedule)
                first.setdefault(row[0], row)
    for key, (_, kind, default, description) in first.items():
        schedules = "all schedules" if len(owners[key]) == len(SCHEDULE_CLASSES) else ", ".join(owners[key])
        yield key, kind, default, " ".join(filter(None, [description, f"({schedules})"]))


def markdown() -> str:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, kind, default, description in rows(JobConfig):
        lines.append(f"| `{key}` | {kind} | {default} | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
