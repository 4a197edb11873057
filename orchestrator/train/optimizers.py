"""Optimizer registry: the job's optimizer -> the `optimizer` section of the DeepSpeed config.

DeepSpeed builds the optimizer itself so that ZeRO and offload can manage its states. `torch_adam` selects
torch's Adam/AdamW instead of DeepSpeed's compiled fused kernel, which would need a CUDA build step; `fused` picks
torch's own fused kernel (CPU and GPU). ZeRO hands the optimizer one flat tensor per partition, and the default
per-tensor Adam makes temporaries of that tensor's size at every step: on CPU, fused is faster and takes ZeRO-3's
peak down (benchmarks/zero_memory.py and overhead.py, figures in docs/benchmarks.md).
"""

from collections.abc import Callable

from orchestrator.config.job import OptimizerConfig


def _adam(decoupled_weight_decay: bool) -> Callable[[OptimizerConfig], dict]:
    def section(opt: OptimizerConfig) -> dict:
        params = {"lr": opt.lr, "betas": list(opt.betas), "eps": opt.eps, "weight_decay": opt.weight_decay}
        params.update(torch_adam=True, fused=True, adam_w_mode=decoupled_weight_decay)
        return {"type": "AdamW" if decoupled_weight_decay else "Adam", "params": params}

    return section


def _sgd(opt: OptimizerConfig) -> dict:
    # DeepSpeed falls back to torch.optim.<type> for types it does not implement itself.
    return {"type": "SGD", "params": {"lr": opt.lr, "momentum": opt.momentum, "weight_decay": opt.weight_decay}}


OPTIMIZERS: dict[str, Callable[[OptimizerConfig], dict]] = {
    "adamw": _adam(decoupled_weight_decay=True),
    "adam": _adam(decoupled_weight_decay=False),
    "sgd": _sgd,
}


def optimizer_section(opt: OptimizerConfig) -> dict:
    return OPTIMIZERS[opt.name](opt)
