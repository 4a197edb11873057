"""Runs a test's function on every rank of a gloo process group of its own: N spawned processes on this machine,
set up as Ray Train sets up its workers (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and joined by
DeepSpeed as the workers join it. Modelled on PyTorch's and torchtitan's multi-process test bases: a rank's exception
is raised in the test with its traceback (the other ranks are ended), and what each rank returns comes back.

The function and its arguments cross to the processes by pickling: a module-level function, plain values and tensors.
"""

import os
import pickle
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import deepspeed
import deepspeed.comm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orchestrator.environment import worker_environment
from orchestrator.train.local import free_port


def run_on_ranks(function: Callable[..., Any], *args: Any, world_size: int = 2, timeout_s: float = 300) -> list[Any]:
    """What `function(*args)` returned on each rank, by rank. A collective that waits longer than `timeout_s` fails."""
    with tempfile.TemporaryDirectory(prefix="ranks-") as results:
        arguments = (world_size, free_port(), timeout_s, results, function, args)
        mp.start_processes(_rank_main, args=arguments, nprocs=world_size, start_method="spawn")
        return [pickle.loads((Path(results) / str(rank)).read_bytes()) for rank in range(world_size)]


def _rank_main(rank: int, world_size: int, port: int, timeout_s: float, results: str, function: Callable, args: tuple) -> None:
    worker_environment()  # first, as in the training function: DeepSpeed's op is built as a job's workers build it
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    torch.set_num_threads(1)  # one core per rank, as Ray Train gives its CPU workers
    deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=timeout_s))
    try:
        returned = function(*args)
    finally:
        dist.destroy_process_group()
    (Path(results) / str(rank)).write_bytes(pickle.dumps(returned))
