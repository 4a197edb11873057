"""The data pipeline on the test cluster, through `orchestrator prepare`: every planted bad row is quarantined with its
stage and reason, the report counts them, the cache serves a second run and notices a changed file, and data
that cannot train stops the job with exit 2 and one line naming the cause."""

import json
import random

import pytest
from helpers import OBJECTS, SUBJECTS, VERBS, orchestrator, write_job

pytestmark = pytest.mark.integration

LABELS = ["animals", "places"]
PLANTED = {  # what each bad line is, and the stage and reason kind that must drop it
    "malformed": ('{"text": "broken', "read", "malformed JSON"),
    "bad_bytes": (b'{"text": "caf\xe9"}', "read", "undecodable bytes"),
    "missing_text": ('{"category": "places"}', "read", "missing field"),
    "empty": ('{"text": "   ", "category": "places"}', "empty", "empty text"),
    "short": ('{"text": "tiny", "category": "places"}', "length_chars", "shorter than min_chars"),
    "unknown_label": ('{"text": "the cat sees the moon tonight", "category": "planets"}', "labels", "unknown label"),
}


def write_labelled_corpus(directory, rows: int = 400) -> tuple:
    """Sentences labelled by their subject, with the planted lines, exact and near duplicates and a conflict."""
    rng = random.Random(0)
    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        subject = rng.choice(SUBJECTS)
        label = LABELS[SUBJECTS.index(subject) % 2]
        text = f"{subject} {rng.choice(VERBS)} {rng.choice(OBJECTS)} number {i} on day {i * 7 % 31} of the long year"
        lines.append(json.dumps({"text": text, "category": label}).encode())
    exact = lines[0]
    first = json.loads(lines[1])
    near = json.dumps({"text": first["text"].replace("long year", "long years"), "category": first["category"]})
    conflict = json.loads(lines[2])
    lines += [exact, near.encode(), json.dumps({"text": conflict["text"], "category": "animals" if conflict["category"] == "places" else "places"}).encode()]
    lines += [line if isinstance(line, bytes) else line.encode() for line, _, _ in PLANTED.values()]
    path = directory / "labelled.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, len(lines)


def classification_job(corpus, cache_dir, **data) -> dict:
    return {
        "task": "sequence_classification",
        "model": {"family": "bert", "dims": {"layers": 1, "hidden": 32, "heads": 2, "ffn": 64, "max_positions": 64}},
        "data": {
            "paths": [str(corpus)],
            "label_field": "category",
            "labels": LABELS,
            "tokenizer": {"train": "wordpiece", "vocab_size": 300},
            "seq_len": 32,
            "val_fraction": 0.1,
            "cache_dir": str(cache_dir),
            "clean": {"normalize": True, "min_chars": 10, "dedup_exact": True, "dedup_near": {"threshold": 0.8}},
            **data,
        },
        "train": {"max_steps": 5, "micro_batch_size": 4},
    }


def test_prepare_quarantines_reports_and_caches(cluster, tmp_path):
    corpus, lines = write_labelled_corpus(tmp_path / "data")
    job = write_job(tmp_path / "job.yaml", classification_job(corpus, tmp_path / "cache"))

    first = orchestrator(cluster, "prepare", str(job))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "cache: miss" in first.stdout
    assert f"data: {lines:,} rows read" in first.stdout
    [entry] = (tmp_path / "cache").glob("sequence_classification-*")
    quarantined = [json.loads(line) for line in (entry / "quarantine.jsonl").read_text().splitlines()]
    found = {(row["stage"], row["reason"].split(" ")[0]) for row in quarantined}
    for name, (_, stage, kind) in PLANTED.items():
        assert (stage, kind.split(" ")[0]) in found, name
    by_stage = {}
    for row in quarantined:
        by_stage.setdefault(row["stage"], []).append(row)
    assert [row["source"] for row in by_stage["dedup_exact"]] == [f"{corpus}:{lines - len(PLANTED) - 2}"]
    assert len(by_stage["dedup_near"]) == 1 and "long years" in by_stage["dedup_near"][0]["row"]["text"]
    assert len(by_stage["labels"]) == 3  # the unknown label, and both rows of the conflicting pair
    report = json.loads((entry / "meta.json").read_text())["report"]
    assert report["rows_read"] == lines and report["rows_kept"] == lines - len(quarantined)

    second = orchestrator(cluster, "prepare", str(job))
    assert second.returncode == 0 and "data: cache hit, preprocessing skipped" in second.stdout

    with corpus.open("a") as out:  # any change to an input file makes a new entry
        out.write(json.dumps({"text": "a brand new sentence about the river", "category": "places"}) + "\n")
    third = orchestrator(cluster, "prepare", str(job))
    assert third.returncode == 0 and "cache: miss" in third.stdout
    assert len(list((tmp_path / "cache").glob("sequence_classification-*"))) == 2


@pytest.mark.parametrize(
    "case, data, message",
    [
        ("strict", {"strict": True}, "data.strict: unreadable rows ("),
        ("one_class", {"labels": None, "paths": "ONE_CLASS"}, "data.label_field: 'category' has 1 class(es) after cleaning"),
        ("empty_after_cleaning", {"clean": {"min_chars": 10_000}}, "data: no row is left after cleaning: "),
    ],
)
def test_data_that_cannot_train_exits_2_naming_the_cause(cluster, tmp_path, case, data, message):
    corpus, _ = write_labelled_corpus(tmp_path / "data", rows=60)
    if data.get("paths") == "ONE_CLASS":
        one_class = tmp_path / "data" / "one_class.jsonl"
        one_class.write_text("".join(json.dumps({"text": f"text number {i} here", "category": "places"}) + "\n" for i in range(50)))
        data["paths"] = [str(one_class)]
    job = write_job(tmp_path / "job.yaml", classification_job(corpus, tmp_path / "cache", **data))
    result = orchestrator(cluster, "prepare", str(job))
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert message in line and "Traceback" not in result.stderr
