"""How much memory a worker holds: its peak, and the bytes of its model states (parameters, gradients, optimizer
states, in whatever partitions and buffers DeepSpeed keeps them), which is what ZeRO divides among workers."""

import resource

import psutil
import torch


def current_bytes(use_gpu: bool) -> int:
    return torch.cuda.memory_allocated() if use_gpu else psutil.Process().memory_info().rss


def peak_bytes(use_gpu: bool) -> int:
    """The process's high-water mark: accelerator memory on GPU, resident set size on CPU."""
    return torch.cuda.max_memory_allocated() if use_gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def base_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16), which holds the master weights and states."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def model_state_bytes(module: torch.nn.Module, optimizer) -> int:
    """Bytes of the model states this worker holds, as the ZeRO paper counts them: the module's parameters (their
    ZeRO-3 shards in `ds_tensor`) and gradients, and the optimizer's master weights, gradients and states. Each
    storage counts once, however many views share it. DeepSpeed's communication buckets are not model states (they
    are in the peak)."""
    tensors = []
    for parameter in module.parameters():
        tensors += [parameter, parameter.grad, getattr(parameter, "ds_tensor", None)]
    base = base_optimizer(optimizer)
    for group in base.param_groups:
        tensors += [tensor for parameter in group["params"] for tensor in (parameter, parameter.grad)]
    tensors += [value for state in base.state.values() for value in state.values() if isinstance(value, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t is not None}
    storages.pop(0, None)  # empty tensors (ZeRO-3's released parameters) have no storage
    return sum(storages.values())
