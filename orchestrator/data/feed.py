"""What each worker trains on: its micro batches of every optimizer step, in an order that is the same on all ranks
and for every number of workers.

Every worker walks the whole (already tokenized) split in the same seeded order, one global batch (the rows of one
optimizer step: micro_batch_size x grad_accum_steps x scaling.num_workers) at a time. With `world_size` workers each
doing `accumulation` micro steps, micro step k of rank r holds rows [(k * world_size + r) * b, ... + b). So
- every rank gets exactly the same number of batches (uneven shards deadlock collectives, ray#41973);
- 2 workers x micro batch b see the same global batches as 1 worker x 2b, or 1 worker x b accumulating twice:
  an elastic job that lost a worker trains on exactly the batches it would have;
- a resumed run skips the steps it already took and sees exactly what the uninterrupted run saw
  (Ray Data iterators cannot seek, ray#48224).
"""

from collections.abc import Iterator

import torch

SHUFFLE_BUFFER_BATCHES = 8


def rank_micro_batches(global_batch: dict[str, torch.Tensor], rank: int, world_size: int, micro_batch_size: int) -> list[dict[str, torch.Tensor]]:
    """This rank's micro batches of one global batch, in the order it steps through them."""
    rows = len(next(iter(global_batch.values())))
    starts = range(rank * micro_batch_size, rows, world_size * micro_batch_size)
    return [{name: column[start : start + micro_batch_size] for name, column in global_batch.items()} for start in starts]


def step_batches(
    dataset,
    *,
    rank: int,
    world_size: int,
    micro_batch_size: int,
    global_batch_size: int,
    shuffle_seed: int | None = None,
    skip: int = 0,
) -> Iterator[list[dict[str, torch.Tensor]]]:
    """One pass over `dataset`: for each global batch after the first `skip`, this rank's micro batches (every
    column of the task). The order depends on the global batch size and the seed, not on the number of workers."""
    batches = dataset.iter_torch_batches(
        batch_size=global_batch_size,
        drop_last=True,
        dtypes=torch.long,
        local_shuffle_buffer_size=global_batch_size * SHUFFLE_BUFFER_BATCHES if shuffle_seed is not None else None,
        local_shuffle_seed=shuffle_seed,
    )
    for index, batch in enumerate(batches):
        if index >= skip:
            yield rank_micro_batches(batch, rank, world_size, micro_batch_size)
