"""What each worker trains on: its slice of every global micro batch, in an order that is the same on all ranks.

Every worker walks the whole (already tokenized) split in the same seeded order and keeps rows
[rank * b, (rank + 1) * b) of each global micro batch of world_size * b rows. So
- every rank gets exactly the same number of batches (uneven shards deadlock collectives, ray#41973);
- 2 workers x micro batch b see the same global batches as 1 worker x 2b;
- a resumed run skips the batches it already consumed and sees exactly what the uninterrupted run saw
  (Ray Data iterators cannot seek, ray#48224).
"""

import time
from dataclasses import dataclass
from typing import Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")

SHUFFLE_BUFFER_BATCHES = 8


def rank_slice(global_batch: dict[str, torch.Tensor], rank: int, micro_batch_size: int) -> dict[str, torch.Tensor]:
    return {name: rows[rank * micro_batch_size : (rank + 1) * micro_batch_size] for name, rows in global_batch.items()}


def rank_batches(
    dataset,
    *,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    shuffle_seed: int | None = None,
    skip: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yields this rank's micro batches (every column of the task) of one pass over `dataset`, after skipping
    `skip` global batches."""
    rows = micro_batch_size * world_size
    batches = dataset.iter_torch_batches(
        batch_size=rows,
        drop_last=True,
        dtypes=torch.long,
        local_shuffle_buffer_size=rows * SHUFFLE_BUFFER_BATCHES if shuffle_seed is not None else None,
        local_shuffle_seed=shuffle_seed,
    )
    for index, batch in enumerate(batches):
        if index >= skip:
            yield rank_slice(batch, rank, micro_batch_size)


@dataclass
class WaitClock:
    seconds: float = 0.0


def timed(items: Iterable[T], clock: WaitClock) -> Iterator[T]:
    """The items, adding the time spent waiting for each one to `clock` (a worker's data wait)."""
    iterator = iter(items)
    while True:
        started = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        clock.seconds += time.perf_counter() - started
        yield item
