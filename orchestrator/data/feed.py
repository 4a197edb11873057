"""What each worker trains on: its micro batches of every optimizer step, chosen in index space (Megatron-LM's
sampler) so that every rank reads only its own rows.

For each epoch, every rank computes the same seeded permutation of the split's row positions from the index alone.
Global batch s (the rows of optimizer step s: micro_batch_size x grad_accum_steps x data-parallel workers) is
positions [s * G, (s + 1) * G) of it; with `world_size` workers, micro step k of rank r holds its rows
[(k * world_size + r) * b, ... + b). So
- ranks' rows are disjoint, cover each global batch, and every rank steps through the same number of batches;
- the global batches depend on the seed, the epoch and G, not on the number of workers: 2 workers x micro batch b
  see the same global batches as 1 worker x 2b, or 1 worker x b accumulating twice, and an elastic job that lost a
  worker trains on exactly the batches it would have;
- a resumed run starts at its step's position, reading nothing before it;
- each worker reads b rows per micro step, whatever the corpus size and the number of workers.
"""

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from orchestrator.data.shards import Split

PREFETCH_STEPS = 4  # steps each worker reads ahead of the one it trains on


def epoch_order(rows: int, seed: int | None, epoch: int) -> np.ndarray:
    """Row positions in the order of an epoch: shuffled by (seed, epoch), or as stored when seed is None."""
    if seed is None:
        return np.arange(rows)
    return np.random.default_rng((seed, epoch)).permutation(rows)


def rank_rows(global_batch: np.ndarray, rank: int, world_size: int, micro_batch_size: int) -> list[np.ndarray]:
    """This rank's micro batches (row positions) of one global batch, in the order it steps through them."""
    starts = range(rank * micro_batch_size, len(global_batch), world_size * micro_batch_size)
    return [global_batch[start : start + micro_batch_size] for start in starts]


def step_batches(
    split: Split,
    *,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    global_batch_size: int,
    seed: int | None = None,
    epoch: int = 0,
    skip: int = 0,
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """One epoch of `split`: for each whole global batch after the first `skip`, this rank's micro batches (every
    column of the task), read ahead on a thread."""
    order = epoch_order(len(split), seed, epoch)
    steps = len(order) // global_batch_size

    def read() -> Iterator[list[dict[str, torch.Tensor]]]:
        for step in range(skip, steps):
            global_batch = order[step * global_batch_size : (step + 1) * global_batch_size]
            yield [as_tensors(split.take(rows)) for rows in rank_rows(global_batch, rank, world_size, micro_batch_size)]

    return read_ahead(read(), PREFETCH_STEPS)


def as_tensors(columns: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(values.astype(np.int64)) for name, values in columns.items()}


def read_ahead(items: Iterator, depth: int) -> Iterator:
    """`items`, produced on a thread up to `depth` ahead of the consumer; stops producing when the consumer stops."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def hand_over(entry: tuple) -> bool:
        """Queues `entry` once there is room; False when the consumer has stopped."""
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over((item, None)):
                    return
            hand_over((done, None))
        except BaseException as error:  # raised in the consumer
            hand_over((done, error))

    threading.Thread(target=produce, daemon=True, name="read-ahead").start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
