"""The README and docs/: a README a newcomer reads to the end, links that lead somewhere, examples that hold."""

import re
from pathlib import Path

import click
import typer
import yaml
from helpers import REPO

from orchestrator.cli import app
from orchestrator.config import load_job

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
README_LIMIT_BYTES = 12 * 1024

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target): the only link form these files use
FENCE = re.compile(r"^(```|~~~)")


def outside_code_blocks(text: str) -> list[str]:
    """The lines of a markdown text that are not inside fenced code blocks (a `#` there is a shell comment)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a markdown file: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    found, seen = set(), {}
    for line in outside_code_blocks(path.read_text()):
        if heading := re.match(r"#{1,6}\s+(.*?)\s*#*$", line):
            slug = re.sub(r"[^\w\- ]", "", heading[1].lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            found.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return found


def relative_links(path: Path) -> list[str]:
    text = "\n".join(outside_code_blocks(path.read_text()))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size < README_LIMIT_BYTES, f"README.md: {size:,} bytes of {README_LIMIT_BYTES:,}; move depth into docs/"


def test_every_relative_link_of_readme_and_docs_resolves():
    assert DOCS, "docs/ holds the depth the README links to"
    broken = []
    for path in [README, *DOCS]:
        for target in relative_links(path):
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_doc_is_linked_from_the_readme():
    linked = {(README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)}
    assert not [path.name for path in DOCS if path.resolve() not in linked]


def test_readme_own_job_example_validates(corpus, tmp_path):
    section = README.read_text().split("## Write your own job")[1]
    example = section.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(example)["data"]["paths"][0].endswith(".jsonl")  # the user's own JSON-lines file
    path = tmp_path / "my-job.yaml"
    path.write_text(example)
    job = load_job(path, [f"data.paths=[{corpus}]"])  # the example names the user's own file
    assert job.task == "causal_lm" and job.data.text_field == "text"


def command_names(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names += command_names(command, f"{prefix}{name} ")
        else:
            names.append(prefix + name)
    return names


def test_readme_command_table_names_every_command():
    table = README.read_text().split("## Commands")[1].split("\n## ")[0]
    names = command_names(typer.main.get_command(app))
    assert len(names) > 10
    assert not [name for name in names if not re.search(rf"`{re.escape(name)}\b", table)]
