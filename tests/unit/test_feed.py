"""The prepared splits on disk (data/shards.py) and the index-space sampler that feeds each worker (data/feed.py),
without Ray: each row of a test split holds its own position, so a batch says which rows it read."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.config.errors import UserError
from orchestrator.data.feed import rank_rows, read_ahead, step_batches
from orchestrator.data.shards import INDEX, Split, write_split

ROWS = 1000


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Split:
    """Rows 0..999, written in uneven batches across shards of 64 rows: column `input_ids` [position, position],
    `labels` position."""
    directory = tmp_path_factory.mktemp("split")
    positions = np.arange(ROWS)
    batches = ({"input_ids": np.stack([part, part], axis=1), "labels": part} for part in np.split(positions, [7, 100, 101, 650]))
    assert write_split(batches, directory, rows_per_shard=64) == ROWS
    return Split(directory)


def rows_of(micro_batches: list[dict[str, torch.Tensor]]) -> list[list[int]]:
    return [micro["labels"].tolist() for micro in micro_batches]


def epoch(split: Split, world_size: int, micro: int = 4, global_batch: int = 16, **options) -> list[list[list[list[int]]]]:
    """Every rank's micro batches (their rows) of every step: [step][rank][micro step] -> rows."""
    ranks = [
        list(step_batches(split, rank=rank, world_size=world_size, micro_batch_size=micro, global_batch_size=global_batch, **options))
        for rank in range(world_size)
    ]
    return [[rows_of(ranks[rank][step]) for rank in range(world_size)] for step in range(len(ranks[0]))]


def global_batches(steps: list[list[list[list[int]]]]) -> list[list[int]]:
    """Each step's rows, in the order micro step k of rank r holds them: [(k * world_size + r) * b, ... + b)."""
    out = []
    for ranks in steps:
        world_size = len(ranks)
        out.append([row for k in range(len(ranks[0])) for rank in range(world_size) for row in ranks[rank][k]])
    return out


def test_a_split_returns_the_rows_asked_for_in_that_order_from_any_shard(split):
    assert len(split) == ROWS and split.columns == ["input_ids", "labels"]
    assert len(list(split.directory.glob("*.labels.npy"))) == 16  # 15 full shards of 64 and one of 40
    positions = np.array([999, 0, 64, 63, 500, 500])
    taken = split.take(positions)
    assert taken["labels"].tolist() == positions.tolist()
    assert taken["input_ids"].tolist() == [[p, p] for p in positions]


def test_reading_keeps_no_shard_open_and_a_shard_cut_short_since_opening_is_named(split, tmp_path):
    """A step costs the same for any number of shards: no reader holds files open (a limit of open maps made steps
    map their shards again beyond it), and a shard cut short after the split was checked stops the read, naming it."""

    def open_here() -> list[str]:
        return [target for fd in os.listdir("/proc/self/fd") if (target := os.path.realpath(f"/proc/self/fd/{fd}")).startswith(str(split.directory))]

    assert split.take(np.arange(ROWS))["labels"].tolist() == list(range(ROWS)) and open_here() == []
    write_split([{"labels": np.arange(100)}], tmp_path, rows_per_shard=64)
    short = Split(tmp_path)
    last = Path(tmp_path / "00001.labels.npy")
    last.write_bytes(last.read_bytes()[:-8])
    with pytest.raises(UserError, match=f"the prepared file {last} was cut short while read"):
        short.take(np.array([99]))


def test_a_split_without_its_index_does_not_open(tmp_path):
    write_split([{"labels": np.arange(10)}], tmp_path)
    (tmp_path / INDEX).unlink()
    with pytest.raises(FileNotFoundError):
        Split(tmp_path)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_ranks_rows_are_disjoint_and_cover_each_global_batch(split, world_size):
    steps = epoch(split, world_size, seed=3)
    assert len(steps) == ROWS // 16  # whole global batches only
    seen = [row for step in global_batches(steps) for row in step]
    assert len(seen) == len(set(seen)) == len(steps) * 16
    for ranks in steps:
        assert all(len(micro_batches) == 4 // world_size for micro_batches in ranks)  # every rank steps alike


def test_global_batches_are_the_same_for_1_2_and_4_workers(split):
    """So an elastic job that restarts on fewer workers goes on with the same sequence of global batches."""
    one, two, four = (global_batches(epoch(split, world_size, seed=3, epoch=1)) for world_size in (1, 2, 4))
    assert one == two == four


def test_epochs_reshuffle_by_seed_and_epoch_and_an_unseeded_split_keeps_its_order(split):
    orders = {(seed, number): global_batches(epoch(split, 1, seed=seed, epoch=number)) for seed in (0, 1) for number in (0, 1)}
    assert len({str(order) for order in orders.values()}) == 4
    assert orders[(0, 1)] == global_batches(epoch(split, 1, seed=0, epoch=1))  # deterministic
    assert global_batches(epoch(split, 1)) == [list(range(start, start + 16)) for start in range(0, ROWS - 15, 16)]


def test_a_resumed_epoch_reads_nothing_before_its_step(split, monkeypatch):
    """Resume at step k: the same batches as the uninterrupted epoch from k on, and no row of a step before k read."""
    whole = epoch(split, 2, seed=5)
    read: list[int] = []
    take = Split.take
    monkeypatch.setattr(Split, "take", lambda self, positions: read.extend(positions.tolist()) or take(self, positions))
    for k in (1, 30, 61):
        read.clear()
        resumed = epoch(split, 2, seed=5, skip=k)
        assert resumed == whole[k:]
        assert not set(read) & {row for step in global_batches(whole[:k]) for row in step}
        assert len(read) == 16 * (len(whole) - k)  # each row of the remaining steps, once


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 300), world_size=st.integers(1, 4), micro=st.integers(1, 5), accumulation=st.integers(1, 3))
def test_rank_rows_split_any_global_batch_exactly(rows, world_size, micro, accumulation):
    global_batch = np.arange(world_size * micro * accumulation) + rows
    parts = [rank_rows(global_batch, rank, world_size, micro) for rank in range(world_size)]
    assert all(len(part) == accumulation for part in parts)
    assert sorted(int(row) for part in parts for micro_batch in part for row in micro_batch) == global_batch.tolist()


def test_read_ahead_keeps_order_raises_errors_and_stops_with_its_consumer():
    assert list(read_ahead(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("unreadable shard")

    with pytest.raises(ValueError, match="unreadable shard"):
        list(read_ahead(failing(), depth=2))

    produced = []

    def counted():
        for item in range(1000):
            produced.append(item)
            yield item

    items = read_ahead(counted(), depth=2)
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert len(produced) <= 3 + 2 + 2  # taken, queued, one in hand: the producer stopped


def test_a_split_travels_as_its_path(split):
    import pickle

    copy = pickle.loads(pickle.dumps(split))
    assert copy.directory == split.directory and copy.take(np.array([5]))["labels"].tolist() == [5]
    assert len(pickle.dumps(split)) < 500
