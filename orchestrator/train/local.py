"""One worker in the calling process: Ray Train V2's local mode (`ScalingConfig(num_workers=0)`), for a run of one
worker that needs no worker group of its own. A one-worker sweep trial trains this way, in its trial's process."""

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def end_process_group() -> None:
    """This process's group ends, and DeepSpeed's clone of it, which DeepSpeed would otherwise keep for the next engine
    built in this process (in a group that no longer exists). Before local mode ends the group itself: DeepSpeed
    lets go of its clone only when it ends the group."""
    import deepspeed.comm
    import torch.distributed as dist

    if deepspeed.comm.is_initialized():
        deepspeed.comm.destroy_process_group()
    elif dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def one_process_group() -> Iterator[None]:
    """torchrun's variables, from which local mode makes a process group of this process alone (DeepSpeed needs one),
    for the block only: the next run in this process (Tune reuses a trial's process) picks its own port."""
    variables = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
