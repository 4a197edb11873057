"""Rows staged on disk between the passes of a preparation.

The cleaning stages and the measure stage each feed several passes (the dedup stages, the tokenizer's sample, the
quarantine, encoding). Their rows are written once as parquet files in the preparation's directory and every pass
reads the files again, so the object store holds a pass's blocks in flight, never the corpus, and no stage runs
twice. The files are removed when the preparation ends (`staging_area`).
"""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

STAGED = "staged"  # in the preparation's directory
ROWS_PER_FILE = 32_768  # a pass reads a file a task: files enough for the CPUs to share, each worth a task's start
ROWS_PER_BATCH = 8_192  # what a task holds of its file at once, however long the rows are


@contextmanager
def staging_area(directory: Path) -> Iterator[Path]:
    """Where a preparation in `directory` stages rows; emptied before (a killed preparation's rows are staged again,
    its finished parts stay) and removed after."""
    staged = directory / STAGED
    shutil.rmtree(staged, ignore_errors=True)
    try:
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)


@dataclass(frozen=True)
class Staged:
    """Rows written to parquet `files`."""

    files: list[str]
    rows: int

    def read(self, columns: list[str] | None = None) -> ray.data.Dataset:
        """A pass over the rows (their `columns`, all by default): one task a file, reading it with pyarrow. Ray's
        read_parquet made a pass over the 100 MB corpus's staged rows 3.0 s, against 0.8 s this way (2 CPUs)."""
        if not self.files:
            return ray.data.from_items([])
        paths = ray.data.from_items([{"path": path} for path in self.files], override_num_blocks=len(self.files))
        return paths.map_batches(_read_files, batch_size=1, fn_kwargs={"columns": columns})


def stage(rows: ray.data.Dataset, directory: Path) -> Staged:
    """Writes `rows` to `directory` (missing or empty)."""
    rows.write_parquet(str(directory), max_rows_per_file=ROWS_PER_FILE)
    files = sorted(str(path) for path in directory.glob("*.parquet"))
    return Staged(files, sum(pq.ParquetFile(path).metadata.num_rows for path in files))


def _read_files(batch: dict, columns: list[str] | None) -> Iterator:
    for path in batch["path"]:
        for rows in pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH, columns=columns):
            yield pa.Table.from_batches([rows])
