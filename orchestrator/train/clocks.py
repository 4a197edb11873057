"""Where a worker's step time goes, measured where it is spent: waiting for data, and reducing gradients.

The gradient-reduction clock times DeepSpeed's `allreduce_gradients`, the whole reduction under ZeRO-0 and 1;
ZeRO-2 and 3 reduce buckets in hooks during the backward pass, so only their last bucket is timed. On GPU,
collectives run on their own stream: the clock is the host time spent launching and waiting for them.
"""

import functools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Clock:
    seconds: float = 0.0


def timed(items: Iterable[T], clock: Clock) -> Iterator[T]:
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


def timed_calls(function: Callable[..., T], clock: Clock) -> Callable[..., T]:
    """`function`, adding the time each call takes to `clock`."""

    @functools.wraps(function)
    def timed_function(*args, **kwargs) -> T:
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            clock.seconds += time.perf_counter() - started

    return timed_function


class Window:
    """The steps since the last progress line: how long they took, and the share of that each clock had."""

    def __init__(self, clocks: dict[str, Clock]):
        self.clocks = clocks
        self.restart()

    def restart(self) -> None:
        self.started, self.steps = time.perf_counter(), 0
        self.clocks_at_start = {name: clock.seconds for name, clock in self.clocks.items()}

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def fractions(self, seconds: float) -> dict[str, float]:
        return {name: (clock.seconds - self.clocks_at_start[name]) / seconds for name, clock in self.clocks.items()}
