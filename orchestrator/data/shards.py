"""Prepared splits on disk: fixed-size shards of numpy arrays and an index, which workers memory-map and read only
their own rows of (data/feed.py).

A split is a directory:

    index.json              {"rows": N, "rows_per_shard": R, "shards": [n_0, n_1, ...], "columns": [...]}
    00000.input_ids.npy     rows [0, R) of the column; shard k holds rows [kR, kR + n_k), every shard but the last full

Opening a split reads the index alone, so it costs the same for any corpus; reading rows touches only the pages of
those rows. `.npy` files map straight into memory (no decoding, no row groups to scan past).
"""

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

INDEX = "index.json"
ROWS_PER_SHARD = 8192  # 8 MB per shard of 256-token int32 rows: small enough to copy, large enough to list
OPEN_SHARDS = 256  # memory maps a reader keeps open (each is a file descriptor)


def shard_file(directory: Path, shard: int, column: str) -> Path:
    return directory / f"{shard:05d}.{column}.npy"


def write_split(batches: Iterable[dict[str, np.ndarray]], directory: Path, rows_per_shard: int = ROWS_PER_SHARD) -> int:
    """Writes the rows of `batches` (column -> array of rows, in order) as the split `directory`; returns its rows.
    Holds at most one shard's rows at a time. The index is written last: a split without one is incomplete."""
    directory.mkdir(parents=True, exist_ok=True)
    sizes: list[int] = []
    columns: list[str] = []
    pending: list[dict[str, np.ndarray]] = []
    pending_rows = 0

    def flush(rows: int) -> None:
        nonlocal pending, pending_rows
        joined = {column: np.concatenate([part[column] for part in pending]) for column in columns}
        for column, values in joined.items():
            np.save(shard_file(directory, len(sizes), column), values[:rows])
        sizes.append(rows)
        rest = {column: values[rows:] for column, values in joined.items()}
        pending, pending_rows = [rest], pending_rows - rows

    for batch in batches:
        rows = len(next(iter(batch.values()), []))
        if not rows:
            continue
        columns = columns or sorted(batch)
        pending.append({column: np.asarray(batch[column]) for column in columns})
        pending_rows += rows
        while pending_rows >= rows_per_shard:
            flush(rows_per_shard)
    if pending_rows:
        flush(pending_rows)
    index = {"rows": sum(sizes), "rows_per_shard": rows_per_shard, "shards": sizes, "columns": columns}
    (directory / INDEX).write_text(json.dumps(index))
    return index["rows"]


class Split:
    """A written split, opened by its index: rows by position, read from the shards that hold them."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = json.loads((self.directory / INDEX).read_text())
        self.rows: int = index["rows"]
        self.rows_per_shard: int = index["rows_per_shard"]
        self.columns: list[str] = index["columns"]
        self._open = lru_cache(maxsize=OPEN_SHARDS)(self._map)

    def __len__(self) -> int:
        return self.rows

    def __reduce__(self):  # travels to workers as its path; each process maps the shards itself
        return Split, (str(self.directory),)

    def _map(self, shard: int, column: str) -> np.ndarray:
        return np.load(shard_file(self.directory, shard, column), mmap_mode="r")

    def take(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The rows at `positions` (in that order), each column an array of them."""
        positions = np.asarray(positions, dtype=np.int64)
        shards, offsets = np.divmod(positions, self.rows_per_shard)
        held_in = [(int(shard), shards == shard) for shard in np.unique(shards)]  # each shard and its rows' places
        taken = {}
        for column in self.columns:
            parts = [(self._open(shard, column), here) for shard, here in held_in]
            first = parts[0][0]
            taken[column] = np.empty((len(positions), *first.shape[1:]), dtype=first.dtype)
            for part, here in parts:
                taken[column][here] = part[offsets[here]]
        return taken
