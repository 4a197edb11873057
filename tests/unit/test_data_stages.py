"""Reading, encoding, augmentation, the report and the cache key: pure functions, without Ray; and the cache round trip on a local Ray."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_job, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.config.errors import UserError
from orchestrator.config.job import AugmentConfig, JobConfig, TokenizerConfig
from orchestrator.data import cache
from orchestrator.data.augment import add_augmented_copies, augmented
from orchestrator.data.encode import IGNORED_LABEL, encode_classification, encode_seq2seq, measure
from orchestrator.data.read import parse_file
from orchestrator.data.report import HISTOGRAM_BINS, DataReport, count_dropped, length_summary, reason_kind
from orchestrator.data.tokenizers import from_json, sample_rows, separator_id, train_tokenizer

FIELDS = {"text": "text", "label": "category"}


def test_jsonl_bad_lines_are_quarantined_with_file_and_line():
    data = b'{"text": "good", "category": "a"}\n{"text": "broken\n\xff\xfe bad bytes\n{"category": "b"}\n\n[1, 2]\n'
    rows = parse_file(data, "/d/f.jsonl", file_index=3, fmt="jsonl", fields=FIELDS)
    assert [(r["source"], r["stage"], reason_kind(r["reason"])) for r in rows] == [
        ("/d/f.jsonl:1", "", ""),
        ("/d/f.jsonl:2", "read", "malformed JSON"),
        ("/d/f.jsonl:3", "read", "undecodable bytes"),
        ("/d/f.jsonl:4", "read", "missing field"),
        ("/d/f.jsonl:6", "read", "not a JSON object"),
    ]
    assert rows[0]["text"] == "good" and rows[0]["label"] == "a"
    assert rows[0]["row_id"] == (3 << 32) + 1
    assert "'text'" in rows[3]["reason"]


def test_csv_rows_are_numbered_by_line_even_across_quoted_newlines():
    data = b'category,text\na,"two\nlines"\nb,one line\n'
    rows = parse_file(data, "f.csv", 0, "csv", FIELDS)
    assert [(r["source"], r["text"], r["label"]) for r in rows] == [("f.csv:3", "two\nlines", "a"), ("f.csv:4", "one line", "b")]


def test_reason_kinds_drop_the_particulars():
    assert reason_kind("duplicate of /d/f.jsonl:3") == "duplicate"
    assert reason_kind("unknown label 'x'") == "unknown label"
    assert reason_kind("longer than max_tokens (412 > 400)") == "longer than max_tokens"
    assert count_dropped([{"stage": "read", "reason": "malformed JSON: x"}] * 2) == {"read": {"malformed JSON": 2}}


def test_report_stage_table_chains_rows_in_and_out():
    report = DataReport(rows_read=10, dropped={"read": {"malformed JSON": 1}, "dedup_exact": {"duplicate": 3}}, rows_kept=6)
    table = {row["stage"]: row for row in report.stage_table()}
    assert (table["read"]["rows_in"], table["read"]["rows_out"]) == (10, 9)
    assert (table["dedup_exact"]["rows_in"], table["dedup_exact"]["rows_out"]) == (9, 6)
    assert table["length_tokens"]["rows_out"] == 6
    assert DataReport.from_json(report.to_json()) == report


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"the cat {i} sees the dog. le chat {i % 7} voit le chien." for i in range(200)]
    return train_tokenizer(TokenizerConfig(train="bpe", vocab_size=300), texts)


def test_measure_counts_tokens_and_drops_by_length(tokenizer):
    batch = {"text": np.array(["a", "the cat sees the dog " * 20, None], dtype=object)}
    batch |= {"stage": np.array(["", "", "empty"], dtype=object), "reason": np.array(["", "", "empty text"], dtype=object)}
    out = measure(batch, tokenizer.backend_tokenizer.to_str(), min_tokens=2, max_tokens=50, val_fraction=0.5, seed=0)
    assert out["n_tokens"][0] == 1 and out["n_tokens"][1] > 50
    assert list(out["stage"]) == ["length_tokens", "length_tokens", "empty"]
    assert out["reason"][0] == "shorter than min_tokens (1 < 2)"
    assert out["n_tokens"][2] == 0 and not out["is_val"][2] and out["reason"][2] == "empty text"  # dropped before: as it was


def test_classification_rows_are_padded_with_a_mask_and_label_index(tokenizer):
    batch = {"text": np.array(["the cat", "the dog " * 30], dtype=object), "label": np.array(["b", "a"], dtype=object)}
    batch["is_val"] = np.array([False, True])
    out = encode_classification(batch, tokenizer.backend_tokenizer.to_str(), seq_len=16, pad=tokenizer.pad_token_id, label_ids={"a": 0, "b": 1})
    assert out["input_ids"].shape == (2, 16) and out["labels"].tolist() == [1, 0]
    assert out["attention_mask"][0].sum() < 16 and out["attention_mask"][1].sum() == 16  # truncated
    assert (out["input_ids"][0][out["attention_mask"][0] == 0] == tokenizer.pad_token_id).all()


def test_seq2seq_targets_end_with_the_separator_and_ignore_padding(tokenizer):
    batch = {"text": np.array(["the cat"], dtype=object), "target": np.array(["le chat"], dtype=object), "is_val": np.array([False])}
    separator = separator_id(from_json(tokenizer.backend_tokenizer.to_str()))
    out = encode_seq2seq(batch, tokenizer.backend_tokenizer.to_str(), seq_len=12, pad=tokenizer.pad_token_id, separator=separator)
    labels = out["labels"][0]
    real = labels[labels != IGNORED_LABEL]
    assert real[-1] == separator and tokenizer.decode(real[:-1].tolist()).strip() == "le chat"
    assert (labels[len(real) :] == IGNORED_LABEL).all()
    assert out["attention_mask"][0].sum() == (out["input_ids"][0] != tokenizer.pad_token_id).sum()


def test_augmentation_is_seeded_and_only_copies_training_rows():
    cfg = AugmentConfig(copies=2, word_dropout=0.2, word_swap=0.2, char_noise=0.1, seed=1)
    text = "the quick brown fox jumps over the lazy dog near the river bank"
    assert augmented(text, cfg, 1) == augmented(text, cfg, 1)
    assert len({text, augmented(text, cfg, 1), augmented(text, cfg, 2)}) == 3
    batch = {"text": np.array([text, "held out text"], dtype=object), "label": np.array(["a", "b"], dtype=object)}
    batch["is_val"] = np.array([False, True])
    out = add_augmented_copies(batch, cfg)
    assert out["label"].tolist() == ["a", "b", "a", "a"] and out["is_val"].tolist() == [False, True, False, False]


def test_a_part_is_written_with_its_training_rows_augmented_in_corpus_order(tokenizer, tmp_path):
    """write_part adds the augmented copies itself, so they never travel through the object store; the rows arrive
    from the part's staged files in any order, and are written in corpus order (row_id, then text)."""
    from orchestrator.data.pipeline import part_records, write_part
    from orchestrator.data.shards import shard_file

    cfg = AugmentConfig(copies=2, word_dropout=0.3, seed=1)
    texts = ["the cat sees the dog", "le chat voit le chien", "the dog sees the cat"]
    batch = {"text": np.array(texts, dtype=object), "label": np.array(["a", "b", "a"], dtype=object)}
    batch |= {"is_val": np.array([False, True, False]), "row_id": np.array([3, 1, 2], dtype=np.int64)}
    encoding = dict(task="sequence_classification", tokenizer_json=tokenizer.backend_tokenizer.to_str(), seq_len=16, separator=0)
    write_part(batch, 0, tmp_path, augment=cfg, pad=tokenizer.pad_token_id, label_ids={"a": 0, "b": 1}, **encoding)
    (record,) = part_records(tmp_path)
    assert record["train"]["rows"] == 2 * 3 and record["val"]["rows"] == 1
    rows = np.load(shard_file(tmp_path / "train", f"{0:016x}", "input_ids"))
    decoded = [tokenizer.decode(ids.tolist(), skip_special_tokens=True) for ids in rows]
    expected = [text for row in (2, 0) for text in sorted([texts[row], *(augmented(texts[row], cfg, copy) for copy in (1, 2))])]
    assert [text.replace(" ", "") for text in decoded] == [text.replace(" ", "") for text in expected]


def test_the_tokenizer_sample_is_about_one_row_in_every_spread_over_files_and_lines_and_independent_of_blocks():
    """Row ids are file index << 32 | line: one file of 40,000 lines, or 4,000 files of 10 lines, sampled alike."""
    one_file = np.arange(40_000, dtype=np.int64)
    many_files = (np.repeat(np.arange(4_000), 10).astype(np.int64) << 32) | np.tile(np.arange(10), 4_000)
    for row_ids in (one_file, many_files):
        whole = sample_rows({"row_id": row_ids, "text": row_ids.astype(str)}, every=20)["row_id"]
        assert 40_000 / 20 * 0.9 < len(whole) < 40_000 / 20 * 1.1
        blocks = np.concatenate([sample_rows({"row_id": part}, every=20)["row_id"] for part in np.array_split(row_ids, 7)])
        assert np.array_equal(whole, blocks)  # each row's fate is its own, whatever block it arrives in
    assert len(sample_rows({"row_id": one_file}, every=1)["row_id"]) == len(one_file)


@settings(max_examples=100, deadline=None)
@given(lengths=st.lists(st.integers(0, 3000), max_size=300))
def test_the_length_summary_of_counts_per_length_is_np_histogram_of_the_lengths(lengths):
    texts, tokens, edges, counts = length_summary(np.bincount(np.array(lengths, dtype=np.int64), minlength=1))
    assert (texts, tokens) == (len(lengths), sum(lengths))
    if lengths:
        expected_counts, expected_edges = np.histogram(lengths, bins=min(HISTOGRAM_BINS, max(max(lengths) - min(lengths), 1)))
        assert counts == expected_counts.tolist() and edges == pytest.approx(expected_edges.tolist())


def test_cache_key_changes_with_any_input_file_or_setting(tmp_path):
    corpus = write_corpus(tmp_path / "data", documents=20)
    job = JobConfig.model_validate(tiny_job(corpus))
    key = cache.fingerprint(job, [str(corpus)])
    assert key == cache.fingerprint(job, [str(corpus)])
    assert key != cache.fingerprint(JobConfig.model_validate(tiny_job(corpus, data={**job.data.model_dump(), "clean": {"dedup_exact": True}})), [str(corpus)])
    corpus.write_text(corpus.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert key != (key := cache.fingerprint(job, [str(corpus)]))
    text = corpus.read_text()
    time.sleep(0.02)  # file times advance at the kernel's clock tick (up to 10 ms)
    corpus.write_text(text.replace("a", "b", 1))  # the same size, written again
    assert key != cache.fingerprint(job, [str(corpus)])
    # where the cache lives is not part of what it holds
    assert cache.fingerprint(job, [str(corpus)]) == cache.fingerprint(
        job.model_copy(update={"data": job.data.model_copy(update={"cache_dir": "/elsewhere"})}), [str(corpus)]
    )


def test_the_job_that_prepares_the_data_trains_on_the_batches_a_cache_hit_gives(local_ray, mlflow_uri, tmp_path, capsys):
    """The job that fills the cache and every job that reads it train on the same batches; a job that does not cache
    the data prepares the same rows again, writes its splits beside the cache, its own, and removes them when it ends
    (not its quarantined rows); a preparation killed before its last part is resumed by the next job, which writes
    that part alone and makes the same entry. A corpus of several files, so that there are several blocks and parts.
    The data report goes to the job's MLflow run: its tables, plot, quarantined rows and headline figures."""
    import torch
    from mlflow.tracking import MlflowClient

    from orchestrator.config.load import validate
    from orchestrator.data.feed import step_batches
    from orchestrator.data.pipeline import PARTS, QUARANTINE_FILE, prepare, remove_uncached
    from orchestrator.data.staging import STAGED
    from orchestrator.tracking.data_report import log_data_report

    files = sorted(str(path) for path in (Path.home() / ".cache/orchestrator/data/fortunes").glob("*.jsonl"))[:6]
    if not files:
        pytest.skip("no fortunes corpus: bash cluster/install.sh prepares it")
    # the tokenizer trains on about a quarter of the 3,947 rows
    tokenizer = {"train": "bpe", "vocab_size": 512, "sample_texts": 1000}
    data = {"paths": files, "tokenizer": tokenizer, "seq_len": 32, "cache_dir": str(tmp_path), "clean": {"min_chars": 40}}
    job = validate(tiny_job(Path(files[0]), data=data))
    first, second = prepare(job), prepare(job)
    assert (first.report.cache, second.report.cache) == ("miss", "hit")
    # a damaged entry is refused, naming the file, before any worker would start
    index = first.directory / "val" / "index.json"
    whole = index.read_text()
    index.write_text(whole[:20])
    with pytest.raises(UserError, match=f"the prepared file {index} is unreadable"):
        prepare(job)
    index.write_text(whole)
    assert (first.directory / QUARANTINE_FILE).is_file()  # the fortunes shorter than min_chars
    assert not (first.directory / STAGED).exists()  # the rows staged between passes are gone with the preparation

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("data", (tmp_path / "artifacts").as_uri())).info.run_id
    log_data_report(mlflow_uri, run_id, first)
    logged = {item.path for item in client.list_artifacts(run_id, "data")}
    assert logged == {f"data/{name}" for name in ("stages.json", "report.json", "summary.txt", "token_lengths.png", QUARANTINE_FILE)}
    metrics = client.get_run(run_id).data.metrics
    assert metrics["data/rows_read"] == first.report.rows_read > metrics["data/rows_kept"] == first.report.rows_kept
    assert metrics["data/rows_quarantined"] > 0 and metrics["data/tokens"] > 0

    def first_batches(data):
        batches = step_batches(data.train, rank=0, world_size=1, micro_batch_size=8, global_batch_size=8, seed=0)
        return [batch["input_ids"] for (batch,), _ in zip(batches, range(5))]

    assert all(torch.equal(a, b) for a, b in zip(first_batches(first), first_batches(second), strict=True))
    assert first.directory == second.directory and not first.uncached  # the cache entry: kept

    uncached = prepare(job.model_copy(update={"data": job.data.model_copy(update={"cache": False})}))
    assert uncached.uncached and uncached.directory.parent == tmp_path  # beside the cache, where workers read it

    def rows(data, name: str) -> np.ndarray:
        split = getattr(data, name)
        return split.take(np.arange(len(split)))["input_ids"]

    # prepared again, the same packed rows: what a resumed uncached run trains on
    assert all(np.array_equal(rows(first, name), rows(uncached, name)) for name in ("train", "val"))
    remove_uncached(uncached)
    assert [path.name for path in uncached.directory.iterdir()] == [QUARANTINE_FILE]

    # what a preparation killed before its last part leaves: the staged entry without that part, and no indexes
    expected = {name: rows(first, name) for name in ("train", "val")}
    staging = cache.staging_dir(first.directory)
    shutil.copytree(first.directory, staging, dirs_exist_ok=True)
    shutil.rmtree(first.directory)
    *finished, unfinished = sorted((staging / PARTS).glob("*.json"))
    for leftover in [unfinished, *staging.glob(f"*/{unfinished.stem}.*.npy"), staging / "meta.json", *staging.glob("*/index.json")]:
        leftover.unlink()
    written_before = {path.relative_to(staging): path.stat().st_ino for path in staging.glob("*/*.npy")}
    (staging / "train" / f".{unfinished.stem}.input_ids.npy.999").write_bytes(b"\x93NUMPY")  # cut short mid-write
    (staging / STAGED / "cleaned").mkdir(parents=True)
    (staging / STAGED / "cleaned" / "cut-short.parquet").write_bytes(b"PAR1")  # staged rows, never read again
    capsys.readouterr()
    resumed = prepare(job)
    assert f"resuming an interrupted preparation: {len(finished)} parts already written" in capsys.readouterr().out
    assert resumed.directory == first.directory and not staging.exists() and not list(resumed.directory.glob("*/.*"))
    assert all((resumed.directory / path).stat().st_ino == inode for path, inode in written_before.items())  # not rewritten
    assert all(np.array_equal(rows(resumed, name), expected[name]) for name in ("train", "val"))
