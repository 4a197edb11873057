import tempfile
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.data.context import ShuffleStrategy

from orchestrator.config.job import CleanConfig
from orchestrator.data.clean import (
    STAGES,
    band_keys,
    candidate_pairs,
    clean,
    copy_drops,
    copy_key_columns,
    copy_keys,
    drop_reason,
    lsh_bands,
    minhash_signatures,
    near_groups,
    normalize_text,
    pair_similarities,
    row_verdict,
    shingles,
    verdicts,
)
from orchestrator.data.read import source_of

# 30 distinct words: changing the last one changes 1 of 28 three-word shingles (Jaccard 27/29 = 0.93).
LONG = (
    "researchers gathered in the old harbour town to discuss how coastal erosion slowly reshapes fishing villages "
    "while local families argue about funding new sea walls before winter storms arrive again this year"
)
NEAR = LONG.rsplit(" ", 1)[0] + " soon"
OTHER = "a completely unrelated note about baking sourdough bread at home with rye flour and patience every weekend"


# --- pure functions -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("\ufb01ne \uff21\uff22", "fine AB"),  # NFKC: ligature, full-width letters
        ("a\u200bb\x00c\x07d\ufeff", "abcd"),  # zero-width space, NUL, bell, BOM
        ("  one \t\t two   three  ", "one two three"),
        ("line one   \n   line two\r\nline three\rfour", "line one\nline two\nline three\nfour"),
        ("para one\n\n\n\n\npara two\n \n \n \nend", "para one\n\npara two\n\nend"),
        ("a\u00a0\u3000b", "a b"),  # no-break and ideographic spaces
        ("\x0b\x0c \t", ""),
    ],
)
def test_normalize_text(raw, expected):
    assert normalize_text(raw) == expected


def test_shingles():
    assert shingles("The cat SAT on  mats", 3) == ["the cat sat", "cat sat on", "sat on mats"]
    assert shingles("Two Words", 3) == ["two words"]
    assert shingles("exactly three words", 3) == ["exactly three words"]


def test_row_verdict():
    assert row_verdict("fine", {}) is None
    assert row_verdict(None, {}) == ("empty", "empty text")
    assert row_verdict(" \n ", {}) == ("empty", "empty text")
    assert row_verdict("text", {"label": None}) == ("empty", "missing label")
    assert row_verdict("text", {"target": "  "}) == ("empty", "missing target")
    assert row_verdict("x" * 412, {}, max_chars=400) == ("length_chars", "longer than max_chars (412 > 400)")
    assert row_verdict("short", {}, min_chars=10) == ("length_chars", "shorter than min_chars (5 < 10)")
    assert row_verdict("text", {"label": "x"}, known_labels={"a"}) == ("labels", "unknown label 'x'")
    assert row_verdict("text", {"label": "a"}, known_labels={"a"}) is None


FILES = ["f.jsonl"]  # the corpus of every test here: row_id n is its line n


def in_words(drops: dict) -> dict:
    """Verdicts as {row_id: (stage, reason)}."""
    details = zip(drops["stage"], drops["of"].tolist(), drops["similarity"].tolist(), drops["labels"])
    reasons = [(STAGES[stage], drop_reason(STAGES[stage], of, similarity, labels, FILES)) for stage, of, similarity, labels in details]
    return dict(zip(drops["row_id"].tolist(), reasons))


def judged(rows: list[dict], check_conflicts: bool, dedup_exact: bool = True) -> dict:
    """copy_drops on rows given as dicts: {row_id: (stage, reason)}."""
    columns = copy_key_columns(*([row.get(name) for row in rows] for name in ("text", "target", "row_id", "label")))
    return in_words(copy_drops(columns, check_conflicts, dedup_exact))


def test_copy_drops_conflicts_then_duplicates():
    rows = [
        {"row_id": 9, "text": "t", "label": "b"},
        {"row_id": 3, "text": "t", "label": "a"},
        {"row_id": 7, "text": "u", "label": "a"},
        {"row_id": 5, "text": "u", "label": "a"},
        {"row_id": 1, "text": "v", "label": "a"},
    ]
    assert judged(rows, check_conflicts=True) == {
        9: ("labels", "conflicting labels: a, b"),
        3: ("labels", "conflicting labels: a, b"),
        7: ("dedup_exact", "duplicate of f.jsonl:5"),
    }
    assert judged(rows, check_conflicts=False) == {9: ("dedup_exact", "duplicate of f.jsonl:3"), 7: ("dedup_exact", "duplicate of f.jsonl:5")}
    assert judged(rows, check_conflicts=True, dedup_exact=False) == {9: ("labels", "conflicting labels: a, b"), 3: ("labels", "conflicting labels: a, b")}
    assert judged([], check_conflicts=True) == {}


def test_copy_keys_tell_translation_pairs_apart():
    keys = copy_keys(["a\nb", "a", "a", "a"], ["c", "b\nc", "b\nc", None])
    assert len({tuple(key) for key in keys}) == 3 and (keys[1] == keys[2]).all()
    assert judged([{"row_id": i, "text": t, "target": g, "label": ""} for i, (t, g) in enumerate([("x", "y"), ("x", "z"), ("x", "y")])], False) == {
        2: ("dedup_exact", "duplicate of f.jsonl:0")
    }


def test_candidate_pairs_join_each_row_to_the_earliest_of_its_band():
    bands = {"band": np.array([7, 7, 7, 8, 8, 9, 7]), "row_id": np.array([5, 2, 9, 5, 9, 4, 2])}
    pairs = candidate_pairs(bands)
    assert sorted(zip(pairs["kept"].tolist(), pairs["other"].tolist())) == [(2, 5), (2, 9), (5, 9)]
    empty = candidate_pairs({"band": np.array([], dtype=np.int64), "row_id": np.array([], dtype=np.int64)})
    assert len(empty["kept"]) == len(empty["other"]) == 0


def test_minhash_estimates_and_bands():
    long, near, other = minhash_signatures([LONG, NEAR, OTHER], num_perm=128, words_per_shingle=3)
    # a bucket of signature rows: pair 0 is (LONG, NEAR), pair 1 (OTHER, LONG), their rows in any order
    found = pair_similarities({"pair": np.array([1, 0, 0, 1]), "signature": np.stack([other, long, near, long])})
    assert found["pair"].tolist() == [0, 1]
    assert found["similarity"][0] >= 0.8 > found["similarity"][1] and found["similarity"][0] == np.mean(long == near)
    bands, rows = lsh_bands(0.8, 128)
    assert bands * rows <= 128 and bands >= 2
    assert len(set(band_keys(long, bands, rows)) & set(band_keys(near, bands, rows))) > 0
    assert not set(band_keys(long, bands, rows)) & set(band_keys(other, bands, rows))
    assert lsh_bands(0.9, 16)[0] >= 1  # datasketch's MinHashLSH refuses this valid config


def test_near_duplicate_groups_keep_their_lowest_row_through_chains():
    """Similar pairs (2, 3), (1, 2): one group kept as 1; (9, 7), (5, 9): one chain kept as 5, though 7 and 5 were
    never compared."""
    dropped, kept = near_groups(np.array([2, 1, 9, 5]), np.array([3, 2, 7, 9]))
    assert dict(zip(dropped.tolist(), kept.tolist())) == {2: 1, 3: 1, 7: 5, 9: 5}
    assert [len(found) for found in near_groups(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))] == [0, 0]


def test_a_verdict_names_the_kept_row_by_its_file_and_line_in_a_few_bytes():
    """Verdicts hold row_ids, not reasons: the driver holds every one, so at 1.6 GB each reason string was 500 bytes
    a drop there. The reason is rendered where a row is marked, from the file list."""
    files = ["s3://bucket/a.jsonl", "/data/b.jsonl"]
    kept = (1 << 32) + 12  # b.jsonl, line 12
    drops = verdicts([(1 << 32) + 40, 7], [STAGES.index("dedup_near"), STAGES.index("dedup_exact")], of=[kept, 3], similarity=[0.875, np.nan])
    assert drops["row_id"].tolist() == [7, (1 << 32) + 40]  # sorted, as marking looks them up
    assert sum(values.itemsize for values in drops.values()) <= 32
    assert drop_reason("dedup_near", kept, 0.875, "", files) == "near-duplicate (jaccard 0.88) of /data/b.jsonl:12"
    assert drop_reason("dedup_exact", 3, np.nan, "", files) == "duplicate of s3://bucket/a.jsonl:3"
    assert drop_reason("labels", 3, np.nan, "a, b", files) == "conflicting labels: a, b"
    assert source_of(kept, files) == "/data/b.jsonl:12"


# --- on Ray Data ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_data(local_ray):
    context = ray.data.DataContext.get_current()
    saved = context.shuffle_strategy, context.enable_progress_bars
    # Ray's default hash shuffle starts aggregator actors for every groupby (~8 s each on 2 CPUs); the sort
    # shuffle runs the same groupby / map_groups code as tasks.
    context.shuffle_strategy, context.enable_progress_bars = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED, False
    yield
    context.shuffle_strategy, context.enable_progress_bars = saved


def row(row_id: int, text, **fields) -> dict:
    return {"text": text, "source": f"f.jsonl:{row_id}", "row_id": row_id, "stage": "", "reason": "", **fields}


def run(items, labels=None, labelled=False, **cfg) -> dict:
    with tempfile.TemporaryDirectory() as staged:
        cleaned, count = clean(ray.data.from_items(items), CleanConfig(**cfg), labels, labelled, FILES, Path(staged))
        rows = {r["row_id"]: r for r in cleaned.take_all()}
    assert count == len(items)
    return rows


def dropped_rows(rows: dict) -> dict:
    """{row_id: (stage, reason)} of the dropped rows."""
    return {row_id: (r["stage"], r["reason"]) for row_id, r in rows.items() if r["stage"]}


def test_stage_order_is_fixed():
    assert STAGES == ("normalize", "empty", "length_chars", "labels", "dedup_exact", "dedup_near")


def test_classification_stages(ray_data):
    items = [
        row(8, "Great  movie", label="pos"),  # arrives first but is the later copy
        row(2, "great movie", label="pos"),
        row(4, "great\tmovie", label="pos"),
        row(1, "  ", label="pos"),
        row(3, "no label here", label=None),
        row(5, "tiny", label="neg"),
        row(6, "x" * 50, label="neg"),
        row(7, "what a label", label="meh"),
        row(9, "ambiguous", label="pos"),
        row(10, "ambiguous", label="neg"),
        row(11, "Great movie", label="pos"),
        row(12, "\ufb01ne film", label="neg"),
        row(13, "repeat", label="pos", stage="input", reason="set upstream"),
        row(14, "repeat", label="pos"),
    ]
    rows = run(items, labels=["pos", "neg"], labelled=True, normalize=True, min_chars=5, max_chars=40, dedup_exact=True)
    assert dropped_rows(rows) == {
        1: ("empty", "empty text"),
        3: ("empty", "missing label"),
        4: ("dedup_exact", "duplicate of f.jsonl:2"),
        5: ("length_chars", "shorter than min_chars (4 < 5)"),
        6: ("length_chars", "longer than max_chars (50 > 40)"),
        7: ("labels", "unknown label 'meh'"),
        9: ("labels", "conflicting labels: neg, pos"),
        10: ("labels", "conflicting labels: neg, pos"),
        11: ("dedup_exact", "duplicate of f.jsonl:8"),
        13: ("input", "set upstream"),  # an earlier drop is kept as it was and does not count as the first copy
    }
    assert rows[12]["text"] == "fine film" and rows[4]["text"] == "great movie"
    assert len(rows) == len(items)


def test_unchecked_labels_and_no_stages(ray_data):
    items = [row(1, "same", label="a"), row(2, "same", label="b"), row(3, "other", label="zz"), row(4, "no label")]
    assert dropped_rows(run(items, labels=["a"], labelled=True, check_labels=False)) == {4: ("empty", "missing label")}
    assert dropped_rows(run(items, labels=["a"], labelled=False)) == {}


def test_translation_pairs(ray_data):
    items = [
        row(1, "hello", target="hallo"),
        row(2, "hello", target="servus"),
        row(3, "hello", target=" hallo "),
        row(4, "bye", target=""),
        row(5, "bye", target=None),
    ]
    rows = run(items, normalize=True, dedup_exact=True)
    assert dropped_rows(rows) == {
        3: ("dedup_exact", "duplicate of f.jsonl:1"),
        4: ("empty", "missing target"),
        5: ("empty", "missing target"),
    }
    assert rows[3]["target"] == "hallo"


def test_near_duplicates(ray_data):
    items = [
        row(5, NEAR.upper(), label="a"),  # shingles are lowercase
        row(3, LONG, label="a"),
        row(4, OTHER, label="a"),
        row(1, LONG + " extra", label="zz"),  # dropped as unknown first: never the copy that is kept
        row(2, None, label="a"),
    ]
    rows = run(items, labels=["a"], labelled=True, dedup_exact=True, dedup_near={"threshold": 0.8})
    dropped = dropped_rows(rows)
    assert dropped.keys() == {1, 2, 5}
    assert dropped[1] == ("labels", "unknown label 'zz'")
    stage, reason = dropped[5]
    assert stage == "dedup_near" and reason.startswith("near-duplicate (jaccard 0.") and reason.endswith(" f.jsonl:3")
    assert float(reason.split("jaccard ")[1].split(")")[0]) >= 0.8


def test_no_near_duplicates_and_empty_dataset(ray_data):
    cfg = dict(dedup_exact=True, dedup_near={"threshold": 0.8})
    assert dropped_rows(run([row(1, LONG), row(2, OTHER)], **cfg)) == {}
    assert dropped_rows(run([row(1, ""), row(2, None)], **cfg)) == {1: ("empty", "empty text"), 2: ("empty", "empty text")}
    assert run([], **cfg) == {}
