import numpy as np
import pytest
import ray.data

from orchestrator.data.staging import STAGED, bundled, read_files, stage, staging_area


def test_staged_rows_read_back_whole_or_by_column_and_none_when_empty(local_ray, tmp_path):
    # the first block's texts are all missing: its file's column is of Arrow's null type, the other's strings
    items = [{"row_id": i, "text": None if i < 4 else f"text {i}", "stage": ""} for i in range(10)]
    staged = stage(ray.data.from_items(items, override_num_blocks=2), tmp_path / "rows")
    assert staged.rows == 10 and len(staged.files) == 2
    # batches spanning both files: Ray joins a null column to a string one
    rows = sorted(staged.read().map_batches(lambda batch: batch, batch_size=10, batch_format="numpy").take_all(), key=lambda row: row["row_id"])
    assert [(row["row_id"], row["text"]) for row in rows] == [(item["row_id"], item["text"]) for item in items]
    assert staged.read(["row_id"]).columns() == ["row_id"]
    assert staged.read(["row_id"]).sum("row_id") == 45

    empty = stage(ray.data.from_items(items).filter(lambda row: row["row_id"] < 0), tmp_path / "none")
    assert (empty.files, empty.rows, empty.read().count()) == ([], 0, 0)


def test_the_staging_area_is_emptied_before_and_removed_after(tmp_path):
    (tmp_path / STAGED / "cleaned").mkdir(parents=True)
    (tmp_path / STAGED / "cleaned" / "left-by-a-killed-run.parquet").write_bytes(b"PAR1")
    with pytest.raises(RuntimeError), staging_area(tmp_path) as staging:
        assert staging == tmp_path / STAGED and not staging.exists()
        staging.mkdir()
        np.save(staging / "rows.npy", np.arange(3))
        raise RuntimeError("the preparation failed")
    assert not (tmp_path / STAGED).exists()


def test_rows_staged_by_a_column_are_grouped_by_its_values_and_read_back_whole(local_ray, tmp_path):
    items = [{"row_id": i, "part": i % 3, "text": None if i % 3 == 2 else f"text {i}"} for i in range(12)]
    staged = stage(ray.data.from_items(items, override_num_blocks=2), tmp_path, by="part")
    groups = staged.groups("part")
    assert sorted(groups) == [0, 1, 2] and staged.rows == 12
    for part, files in groups.items():
        rows = read_files(files)
        assert "part" not in rows  # in the path
        assert sorted(rows["row_id"].tolist()) == [i for i in range(12) if i % 3 == part]
    assert read_files(groups[2], ["text"])["text"].tolist() == [None] * 4
    assert sorted(staged.read(["row_id"]).to_pandas()["row_id"]) == list(range(12))


def test_a_pass_reads_runs_of_consecutive_files_of_about_the_rows_asked():
    assert bundled([10, 10, 10, 10, 10], 20) == [[0, 1], [2, 3], [4]]
    assert bundled([50, 5, 5, 5, 50], 10) == [[0], [1, 2], [3, 4]]  # a file bigger than a run is one alone
    assert bundled([], 10) == []
