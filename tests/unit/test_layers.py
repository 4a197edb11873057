"""Imports point down the layers (config <- data <- train <- tune <- cli) and make no loop; `validate` writes
nothing. Read from the source: no module is imported here."""

import ast
import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO

from orchestrator.config.load import read_yaml

PACKAGE = REPO / "orchestrator"
# A layer -> the packages of orchestrator it may not import from: config knows only the job file, data only the
# job's files.
FORBIDDEN = {
    "config": {"data", "train", "tune", "cli", "tracking", "inference", "runtime"},
    "data": {"train", "tune", "cli"},
}
# The one import that still points up, lazily inside JobConfig's validation: deepspeed.extra is checked against the
# DeepSpeed config derived from the job (pure Python). It goes when train/deepspeed_config.py and train/optimizers.py
# move into config/, which waits for the worker loop's rewrite (train/loop.py imports them).
KNOWN_UPWARD = {("orchestrator.config.job", "orchestrator.train.deepspeed_config")}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the orchestrator modules it imports, at the top or inside a function."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("orchestrator"):
                # `from package import module` imports the module; `from module import name`, the module
                imported |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module for alias in node.names}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("orchestrator")}
        graph[name] = (imported & set(modules)) - {name}
    return graph


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops: strongly connected sets of more than one module (Tarjan's algorithm)."""
    index, low, stack, found = {}, {}, [], []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            members = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(members) > 1:
                found.append(sorted(members))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_config_knows_only_the_job_file_and_data_only_the_jobs_files():
    graph = import_graph()
    upward = {
        (module, other)
        for module, imported in graph.items()
        for other in imported
        if module.split(".")[1] in FORBIDDEN and other.split(".")[1] in FORBIDDEN[module.split(".")[1]]
    }
    assert upward == KNOWN_UPWARD


def test_no_module_imports_itself_through_others():
    graph = import_graph()
    for module, other in KNOWN_UPWARD:
        graph[module].discard(other)
    assert loops(graph) == []
    graph["orchestrator.config.job"].add("orchestrator.cli.training")  # a loop, to see that one is found
    assert loops(graph)


def snapshot(root: Path) -> dict[str, int]:
    """Every path under root with its modification time: a directory's changes when anything is made in it, even
    something removed at once."""
    return {str(path.relative_to(root)): path.lstat().st_mtime_ns for path in [root, *root.rglob("*")]}


def fake_inputs(home: Path) -> list[Path]:
    """The files the example jobs read, under `home` as ~: a line of text each, and a model's config.json."""
    jobs = sorted((REPO / "jobs").glob("*.yaml"))
    for raw in map(read_yaml, jobs):
        for pattern in raw["data"]["paths"]:
            path = home / pattern.removeprefix("~/").replace("*", "sample")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text('{"text": "a fortune", "category": "love", "en": "cat", "fr": "chat"}\n')
        for directory in (raw["model"].get("pretrained"), raw["data"].get("tokenizer", {}).get("path")):
            if directory:
                (home / directory.removeprefix("~/")).mkdir(parents=True, exist_ok=True)
                (home / directory.removeprefix("~/") / "config.json").write_text("{}")
    return jobs + sorted((REPO / "jobs" / "sweeps").glob("*.yaml"))


def test_validate_writes_nothing(tmp_path):
    """Every example job and sweep validates with HOME, the caches and the temporary directory in an empty place,
    and the place is as it was: no file, no directory made (not even made and removed again)."""
    home, work = tmp_path / "home", tmp_path / "work"
    files = fake_inputs(home)
    work.mkdir()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("ORCHESTRATOR_", "MLFLOW_", "RAY_"))}
    env |= {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "TMPDIR": str(tmp_path),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    # One interpreter for all files: the CLI as `python -m orchestrator validate FILE` runs it, file after file.
    script = "import sys; from orchestrator.cli import app\nfor file in sys.argv[1:]: app(['validate', file], standalone_mode=False)"
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-c", script, *map(str, files)], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count(": valid") == len(files)
    assert snapshot(tmp_path) == before
