"""LR schedule registry: the job's schedule -> a torch LR scheduler, built from the Hugging Face / torch ones.

Each scheduler multiplies the optimizer's peak learning rate; `lr_at` gives the learning rate at a step
without training, for plots, tests and sweeps.
"""

from collections.abc import Callable

import torch
from transformers import optimization as hf

from orchestrator.config.job import ExponentialSchedule, ScheduleConfig

LRScheduler = torch.optim.lr_scheduler.LRScheduler


def _exponential(optimizer, cfg: ExponentialSchedule, total_steps: int) -> LRScheduler:
    decay = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    if not cfg.warmup_steps:
        return decay
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: step / cfg.warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, decay], milestones=[cfg.warmup_steps])


SCHEDULES: dict[str, Callable[..., LRScheduler]] = {
    "constant": lambda opt, cfg, total: hf.get_constant_schedule_with_warmup(opt, cfg.warmup_steps),
    "linear": lambda opt, cfg, total: hf.get_linear_schedule_with_warmup(opt, cfg.warmup_steps, total),
    "cosine": lambda opt, cfg, total: hf.get_cosine_with_min_lr_schedule_with_warmup(opt, cfg.warmup_steps, total, min_lr_rate=cfg.min_lr_ratio),
    "cosine_with_restarts": lambda opt, cfg, total: hf.get_cosine_with_hard_restarts_schedule_with_warmup(
        opt, cfg.warmup_steps, total, num_cycles=cfg.num_cycles
    ),
    "exponential": _exponential,
    "polynomial": lambda opt, cfg, total: hf.get_polynomial_decay_schedule_with_warmup(opt, cfg.warmup_steps, total, lr_end=cfg.lr_end, power=cfg.power),
}


def build_schedule(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int) -> LRScheduler:
    return SCHEDULES[cfg.name](optimizer, cfg, total_steps)


def lr_at(cfg: ScheduleConfig, peak_lr: float, total_steps: int, steps: range) -> list[float]:
    """Learning rate the optimizer uses at each of `steps`."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
    scheduler = build_schedule(optimizer, cfg, total_steps)
    rates = []
    for step in range(steps.stop):
        if step in steps:
            rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates
