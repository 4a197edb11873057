"""Every LR schedule against its closed form (the implementations are Hugging Face's and torch's)."""

import math

import pytest
from pydantic import TypeAdapter

from orchestrator.config.job import ScheduleConfig
from orchestrator.train.schedules import lr_at

PEAK, TOTAL, WARMUP = 1e-3, 100, 10


def warmup(step: int) -> float | None:
    return PEAK * step / WARMUP if step < WARMUP else None


def progress(step: int) -> float:
    return (step - WARMUP) / (TOTAL - WARMUP)


CLOSED_FORMS = {
    "constant": ({}, lambda s: PEAK),
    "linear": ({}, lambda s: PEAK * (TOTAL - s) / (TOTAL - WARMUP)),
    "cosine": (
        {"min_lr_ratio": 0.1},
        lambda s: PEAK * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress(s)))),
    ),
    "cosine_with_restarts": (
        {"num_cycles": 2},
        lambda s: PEAK * 0.5 * (1 + math.cos(math.pi * ((2 * progress(s)) % 1.0))),
    ),
    "exponential": ({"gamma": 0.95}, lambda s: PEAK * 0.95 ** (s - WARMUP)),
    "polynomial": (
        {"power": 2.0, "lr_end": 1e-5},
        lambda s: (PEAK - 1e-5) * (1 - progress(s)) ** 2 + 1e-5,
    ),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_schedule_matches_closed_form(name):
    params, closed_form = CLOSED_FORMS[name]
    cfg = TypeAdapter(ScheduleConfig).validate_python({"name": name, "warmup_steps": WARMUP, **params})
    rates = lr_at(cfg, PEAK, TOTAL, range(TOTAL))
    for step, rate in enumerate(rates):
        expected = warmup(step) if step < WARMUP else closed_form(step)
        assert rate == pytest.approx(expected, rel=1e-6, abs=1e-12), f"{name} at step {step}"


def test_lr_at_reports_only_the_requested_steps():
    cfg = TypeAdapter(ScheduleConfig).validate_python({"name": "linear", "warmup_steps": 0})
    assert lr_at(cfg, 1.0, 10, range(5, 10, 2)) == pytest.approx([0.5, 0.3, 0.1])
