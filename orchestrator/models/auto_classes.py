"""Which architectures a transformers auto class builds (the `model_type`s of config.json it maps to a model class),
read from transformers' own tables in models/auto/modeling_auto.py without importing them: importing an auto class
imports torch (two seconds), and validating a job must answer in well under one.

The chain read is transformers': `class AutoModelForX: _model_mapping = MAPPING`, `MAPPING =
_LazyAutoMapping(CONFIG_MAPPING_NAMES, MAPPING_NAMES)`, `MAPPING_NAMES = OrderedDict([(model_type, class name), ...])`.
"""

import ast
import functools
import importlib.util
from pathlib import Path


@functools.cache
def _module_tree() -> tuple[dict[str, ast.expr], dict[str, ast.ClassDef]]:
    """modeling_auto.py's top-level assignments and classes, by name (an auto class's name is assigned again later:
    `AutoModelForX = auto_class_update(AutoModelForX)`)."""
    package = Path(importlib.util.find_spec("transformers").origin).parent
    tree = ast.parse((package / "models/auto/modeling_auto.py").read_text())
    assigned = {node.targets[0].id: node.value for node in tree.body if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    return assigned, classes


def _class_mapping(auto_class: ast.ClassDef) -> str:
    (value,) = [statement.value for statement in auto_class.body if isinstance(statement, ast.Assign) and statement.targets[0].id == "_model_mapping"]
    return value.id


@functools.cache
def buildable_model_types(auto_class: str) -> frozenset[str]:
    """The config.json model_types `transformers.<auto_class>` builds a model for."""
    assigned, classes = _module_tree()
    lazy_mapping = assigned[_class_mapping(classes[auto_class])]  # _LazyAutoMapping(CONFIG_MAPPING_NAMES, <its names>)
    names = assigned[lazy_mapping.args[1].id]  # OrderedDict([(model_type, class name), ...])
    return frozenset(model_type for model_type, _ in ast.literal_eval(names.args[0]))
