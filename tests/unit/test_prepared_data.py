"""Prepared data on disk, without Ray: a damaged or foreign cache entry stops the job with one line naming the file,
and jobs preparing one entry at once take turns (one prepares, the others load what it made)."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import tiny_job, write_corpus

from orchestrator.config.errors import UserError
from orchestrator.config.job import JobConfig
from orchestrator.data import cache, pipeline
from orchestrator.data.pipeline import PreparedData
from orchestrator.data.report import DataReport
from orchestrator.data.shards import INDEX, Split, shard_file, write_split

ROWS = 100


def write_rows(directory: Path, fingerprint: str) -> None:
    write_split([{"input_ids": np.arange(ROWS * 4).reshape(ROWS, 4)}], directory, rows_per_shard=32, fingerprint=fingerprint)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "index missing": (lambda split: (split / INDEX).unlink(), INDEX, "is missing"),
    "index truncated": (lambda split: truncate(split / INDEX), INDEX, "is unreadable"),
    "shard missing": (lambda split: shard_file(split, "00002", "input_ids").unlink(), "00002.input_ids.npy", "is missing"),
    "shard truncated": (lambda split: truncate(shard_file(split, "00003", "input_ids")), "00003.input_ids.npy", "bytes, not the"),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_split_is_refused_naming_its_file(tmp_path, damage):
    split = tmp_path / "entry" / "train"
    write_rows(split, "abc")
    assert len(Split.checked(split, "abc")) == ROWS  # whole: opens
    harm, file, problem = DAMAGES[damage]
    harm(split)
    with pytest.raises(UserError) as refused:
        Split.checked(split, "abc")
    message = str(refused.value)
    assert f"file {split / file} " in message and problem in message and "\n" not in message
    assert message.endswith(f"delete {tmp_path / 'entry'} to prepare the data again")


def test_a_split_of_other_data_is_refused(tmp_path):
    """An index whose fingerprint is not the job's: copied from another entry, say."""
    write_rows(tmp_path / "train", "abc")
    with pytest.raises(UserError, match=r"index.json is of other data \(fingerprint 'abc', not 'xyz'\)"):
        Split.checked(tmp_path / "train", "xyz")


def test_an_entry_with_truncated_metadata_is_refused_naming_it(tmp_path):
    (tmp_path / "meta.json").write_text('{"label_names": [], "rep')
    with pytest.raises(UserError, match=r"meta.json is unreadable .* delete "):
        cache.read_meta(tmp_path)
    assert cache.read_meta(tmp_path / "absent") is None


def test_jobs_preparing_one_entry_at_once_take_turns_and_load_what_the_first_made(tmp_path, monkeypatch, capsys):
    """Two jobs start preparing the same data together: the pipeline runs once, the second job waits for it and
    then loads the entry, and neither sees a half-written one."""
    job = JobConfig.model_validate(tiny_job(write_corpus(tmp_path / "data", documents=20), data={"cache_dir": str(tmp_path / "cache")}))
    runs = []

    def slow_pipeline(job, files, directory: Path, fingerprint: str) -> PreparedData:
        runs.append(directory)
        time.sleep(0.5)  # long enough for the second job to arrive while this one prepares
        for name in ("train", "val"):
            write_rows(directory / name, fingerprint)
        (directory / pipeline.TOKENIZER_FILE).write_text("{}")
        report = DataReport(rows_read=ROWS, rows_kept=ROWS, train_sequences=ROWS, val_sequences=ROWS)
        return PreparedData(Split(directory / "train"), Split(directory / "val"), "{}", ROWS, ROWS, [], report, directory)

    monkeypatch.setattr(pipeline, "run_pipeline", slow_pipeline)
    files = [str(path) for path in (tmp_path / "data").iterdir()]
    prepared: list[PreparedData] = []
    jobs = [threading.Thread(target=lambda: prepared.append(pipeline.prepare_cached(job, files))) for _ in range(2)]
    for started in jobs:
        started.start()
        time.sleep(0.1)
    for started in jobs:
        started.join()
    assert len(runs) == 1
    assert sorted(data.report.cache for data in prepared) == ["hit", "miss"]
    assert prepared[0].directory == prepared[1].directory == cache.entry_dir(job, cache.fingerprint(job, files))
    assert "data: waiting for another job preparing" in capsys.readouterr().out
