"""Prepared splits on disk: shards of numpy arrays and an index, of which workers read only their own rows
(data/feed.py).

A split is a directory:

    index.json                  {"rows": N, "columns": [...], "fingerprint": the data's cache key,
                                 "shards": [{"name": ..., "rows": n, "bytes": {column: file size}}, ...]}
    <name>.input_ids.npy        one column of one shard; the split's rows are the shards' in the index's order

Preparation writes a shard per part of the corpus (data/pipeline.py), each from the Ray task that encoded it, and the
driver writes the index last, from what the tasks report: a split without one is incomplete. Opening a split reads
the index alone, so it costs the same for any corpus; reading a row is one positional read of its bytes (`.npy` rows
lie at fixed offsets: no decoding, no row groups to scan past), and no file stays open, so a step costs the same
whatever the number of shards (memory maps, one open file each, had to be re-made at every step once a split had
more shards than a reader could keep open). `checked` compares every shard file's size with
the index (a stat per file, no data read), so a missing or truncated shard, or an index from other data, stops the
job in the driver with one line, not a worker mid-run.
"""

import json
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np

from orchestrator.config.errors import UserError

INDEX = "index.json"
ROWS_PER_SHARD = 8192  # write_split's shard size: 8 MB of 256-token int32 rows


def shard_file(directory: Path, name: str, column: str) -> Path:
    return directory / f"{name}.{column}.npy"


def write_atomically(path: Path, write) -> None:
    """`write(file)` to a temporary file beside `path`, renamed into place: a killed writer leaves no half file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with open(partial, "wb") as handle:
        write(handle)
    os.replace(partial, path)


def write_text_atomically(path: Path, text: str) -> None:
    write_atomically(path, lambda handle: handle.write(text.encode()))


def write_shard(directory: Path, name: str, columns: dict[str, np.ndarray]) -> dict:
    """Writes one shard (column -> array of its rows) and returns its index entry; an empty one is not written."""
    rows = len(next(iter(columns.values()), []))
    if not rows:
        return {"name": name, "rows": 0, "bytes": {}}
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for column, values in sorted(columns.items()):
        path = shard_file(directory, name, column)
        write_atomically(path, lambda handle, values=values: np.save(handle, np.asarray(values)))
        sizes[column] = path.stat().st_size
    return {"name": name, "rows": rows, "bytes": sizes}


def write_index(directory: Path, shards: Iterable[dict], fingerprint: str = "") -> int:
    """The index of a split whose shards are written, in the order of their names; returns the split's rows."""
    shards = sorted((shard for shard in shards if shard["rows"]), key=lambda shard: shard["name"])
    columns = sorted(shards[0]["bytes"]) if shards else []
    index = {"rows": sum(shard["rows"] for shard in shards), "columns": columns, "fingerprint": fingerprint, "shards": shards}
    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomically(directory / INDEX, json.dumps(index))
    return index["rows"]


def write_split(batches: Iterable[dict[str, np.ndarray]], directory: Path, rows_per_shard: int = ROWS_PER_SHARD, fingerprint: str = "") -> int:
    """Writes rows held in memory, `batches` of them, as the split `directory` in shards of `rows_per_shard`;
    returns its rows."""
    parts = [{column: np.asarray(values) for column, values in batch.items()} for batch in batches]
    joined = {column: np.concatenate([part[column] for part in parts]) for column in parts[0]} if parts else {}
    rows = len(next(iter(joined.values()), []))
    shards = [
        write_shard(directory, f"{start // rows_per_shard:05d}", {column: values[start : start + rows_per_shard] for column, values in joined.items()})
        for start in range(0, rows, rows_per_shard)
    ]
    return write_index(directory, shards, fingerprint)


class Split:
    """A written split, opened by its index: rows by position, read from the shards that hold them."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = json.loads((self.directory / INDEX).read_text())
        self.rows: int = index["rows"]
        self.columns: list[str] = index["columns"]
        self.shards: list[dict] = index["shards"]
        self.fingerprint: str = index["fingerprint"]
        self.starts = np.cumsum([0] + [shard["rows"] for shard in self.shards])  # each shard's first row
        self._layout = cache(self._read_layout)

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
        for shard in split.shards:
            for column, expected in shard["bytes"].items():
                path = shard_file(directory, shard["name"], column)
                if not path.is_file():
                    raise damaged(path, "is missing", entry)
                if path.stat().st_size != expected:
                    raise damaged(path, f"has {path.stat().st_size} bytes, not the {expected} its index lists (truncated?)", entry)
        return split

    def __len__(self) -> int:
        return self.rows

    def __reduce__(self):  # travels to workers as its path; each process reads the shards itself
        return Split, (str(self.directory),)

    def _read_layout(self, shard: int, column: str) -> tuple[int, np.dtype, tuple]:
        """Where a shard file's rows start, their dtype and shape: read from its `.npy` header once per process."""
        with open(shard_file(self.directory, self.shards[shard]["name"], column), "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(handle)
            return handle.tell(), dtype, shape[1:]

    def take(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        """The rows at `positions` (in that order), each column an array of them."""
        positions = np.asarray(positions, dtype=np.int64)
        shards = np.searchsorted(self.starts, positions, side="right") - 1
        offsets = positions - self.starts[shards]
        held_in = [(int(shard), np.flatnonzero(shards == shard)) for shard in np.unique(shards)]  # each shard, its rows' places
        taken = {}
        for column in self.columns:
            _, dtype, row_shape = self._layout(held_in[0][0], column)
            rows = taken[column] = np.empty((len(positions), *row_shape), dtype=dtype)
            for shard, places in held_in:
                start, _, _ = self._layout(shard, column)
                path = shard_file(self.directory, self.shards[shard]["name"], column)
                handle = os.open(path, os.O_RDONLY)
                try:
                    for place, offset in zip(places.tolist(), offsets[places].tolist()):
                        row = rows[place : place + 1]  # a writable view, also of a scalar column
                        if os.preadv(handle, [row], start + offset * row.nbytes) != row.nbytes:
                            raise damaged(path, "was cut short while read", self.directory.parent)
                finally:
                    os.close(handle)
        return taken


def damaged(path: Path, problem: str, prepared: Path) -> UserError:
    """The one line that stops a job whose prepared data (the directory `prepared`) has a bad file."""
    return UserError(f"data: the prepared file {path} {problem}; delete {prepared} to prepare the data again")
