import numpy as np
import pytest
import ray.data

from orchestrator.data.staging import STAGED, stage, staging_area


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
