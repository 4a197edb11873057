"""Prepared splits on disk: fixed-size shards of numpy arrays and an index, which workers memory-map and read only
their own rows of (data/feed.py).

A split is a directory:

    index.json              {"rows": N, "rows_per_shard": R, "shards": [n_0, n_1, ...], "columns": [...],
                             "bytes": {column: [size of shard 0's file, ...]}, "fingerprint": the data's cache key}
    00000.input_ids.npy     rows [0, R) of the column; shard k holds rows [kR, kR + n_k), every shard but the last full

Opening a split reads the index alone, so it costs the same for any corpus; reading rows touches only the pages of
those rows. `.npy` files map straight into memory (no decoding, no row groups to scan past). `check` compares every
shard file's size with the index (a stat per file, no data read), so a missing or truncated shard, or an index
from other data, stops the job in the driver with one line, not a worker mid-run.
"""

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

from orchestrator.config.errors import UserError

INDEX = "index.json"
ROWS_PER_SHARD = 8192  # 8 MB per shard of 256-token int32 rows: small enough to copy, large enough to list
OPEN_SHARDS = 256  # memory maps a reader keeps open (each is a file descriptor)


def shard_file(directory: Path, shard: int, column: str) -> Path:
    return directory / f"{shard:05d}.{column}.npy"


class SplitWriter:
    """Writes rows, `add`ed batch by batch in order (column -> array of rows), as the split `directory` of the data
    `fingerprint`. Holds at most one shard's rows at a time. The index is written last, by `close`: a split without
    one is incomplete."""

    def __init__(self, directory: Path, rows_per_shard: int = ROWS_PER_SHARD, fingerprint: str = ""):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.rows_per_shard, self.fingerprint = directory, rows_per_shard, fingerprint
        self.sizes: list[int] = []
        self.columns: list[str] = []
        self.file_bytes: dict[str, list[int]] = {}
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        if not len(next(iter(batch.values()), [])):
            return
        self.columns = self.columns or sorted(batch)
        part = {column: np.asarray(batch[column]) for column in self.columns}
        self.pending.append(part)
        self.pending_rows += len(part[self.columns[0]])
        while self.pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def close(self) -> int:
        """Writes the last shard and the index; returns the split's rows."""
        if self.pending_rows:
            self._flush(self.pending_rows)
        index = {
            "rows": sum(self.sizes),
            "rows_per_shard": self.rows_per_shard,
            "shards": self.sizes,
            "columns": self.columns,
            "bytes": self.file_bytes,
            "fingerprint": self.fingerprint,
        }
        (self.directory / INDEX).write_text(json.dumps(index))
        return index["rows"]

    def _flush(self, rows: int) -> None:
        joined = {column: np.concatenate([part[column] for part in self.pending]) for column in self.columns}
        for column, values in joined.items():
            path = shard_file(self.directory, len(self.sizes), column)
            np.save(path, values[:rows])
            self.file_bytes.setdefault(column, []).append(path.stat().st_size)
        self.sizes.append(rows)
        self.pending = [{column: values[rows:] for column, values in joined.items()}]
        self.pending_rows -= rows


def write_split(batches: Iterable[dict[str, np.ndarray]], directory: Path, rows_per_shard: int = ROWS_PER_SHARD, fingerprint: str = "") -> int:
    """Writes the rows of `batches` as the split `directory` (SplitWriter); returns its rows."""
    writer = SplitWriter(directory, rows_per_shard, fingerprint)
    for batch in batches:
        writer.add(batch)
    return writer.close()


class Split:
    """A written split, opened by its index: rows by position, read from the shards that hold them."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = json.loads((self.directory / INDEX).read_text())
        self.rows: int = index["rows"]
        self.rows_per_shard: int = index["rows_per_shard"]
        self.columns: list[str] = index["columns"]
        self.shard_rows: list[int] = index["shards"]
        self.file_bytes: dict[str, list[int]] = index["bytes"]
        self.fingerprint: str = index["fingerprint"]
        self._open = lru_cache(maxsize=OPEN_SHARDS)(self._map)

    @classmethod
    def checked(cls, directory: Path, fingerprint: str) -> "Split":
        """The split at `directory`, once its index and every shard file are whole and of the data `fingerprint`;
        else a UserError naming the first file that is not."""
        index, entry = directory / INDEX, directory.parent  # the split of a cache entry (or of a run's own data)
        try:
            split = cls(directory)
        except FileNotFoundError:
            raise damaged(index, "is missing", entry) from None
        except (ValueError, KeyError, TypeError):  # cut short or not ours: unparseable, or without a field
            raise damaged(index, "is unreadable (truncated?)", entry) from None
        if split.fingerprint != fingerprint:
            raise damaged(index, f"is of other data (fingerprint {split.fingerprint!r}, not {fingerprint!r})", entry)
        for column in split.columns:
            for shard, expected in enumerate(split.file_bytes[column]):
                path = shard_file(directory, shard, column)
                if not path.is_file():
                    raise damaged(path, "is missing", entry)
                if path.stat().st_size != expected:
                    raise damaged(path, f"has {path.stat().st_size} bytes, not the {expected} its index lists (truncated?)", entry)
        return split

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


def damaged(path: Path, problem: str, prepared: Path) -> UserError:
    """The one line that stops a job whose prepared data (the directory `prepared`) has a bad file."""
    return UserError(f"data: the prepared file {path} {problem}; delete {prepared} to prepare the data again")
