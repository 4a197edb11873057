"""A live progress bar for a job run in a terminal: step/total, loss, lr, tokens/s and ETA.

Rank 0 runs in another process (often on another node), so it sends its step to a small Ray actor, the board,
which the driver reads twice a second to redraw a rich bar. Where the driver's output is not a terminal (`ray job
submit`, job logs, files) there is no board and no bar: the worker's log line every `train.log_every` steps says
the same thing once, readably.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

SEND_EVERY_S = 0.25  # rank 0 sends at most this often: an actor call per step would cost fast steps time
REDRAW_EVERY_S = 0.5


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest step of rank 0 and the values it last logged."""

    def __init__(self):
        self.latest: tuple[int, dict] | None = None

    def update(self, step: int, values: dict) -> None:
        self.latest = (step, values)

    def read(self) -> tuple[int, dict] | None:
        return self.latest


class ProgressSender:
    """Rank 0's side of the board: never waits for it."""

    def __init__(self, board):
        self.board, self.values, self.sent_at = board, {}, 0.0

    def step(self, step: int, logged: dict[str, float] | None = None) -> None:
        """Called after every optimizer step; `logged`: the values of a step that was just logged."""
        now = time.monotonic()
        if logged is not None:
            self.values = logged
        if logged is not None or now - self.sent_at >= SEND_EVERY_S:
            self.board.update.remote(step, self.values)
            self.sent_at = now


def describe(values: dict[str, float]) -> str:
    if not values:
        return ""
    return f"loss {values['loss']:.4f} | lr {values['lr']:.2e} | {values['tokens_per_s']:,.0f} tok/s"


@contextmanager
def live_progress(total_steps: int, console: Console | None = None) -> Iterator["ProgressBoard | None"]:
    """The board to hand to rank 0 while the bar is drawn, or None where the output is not a terminal."""
    console = console or Console()
    if not console.is_terminal:
        yield None
        return
    board = ProgressBoard.remote()
    columns = (TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[values]}"), TextColumn("eta"), TimeRemainingColumn())
    stop = threading.Event()
    with Progress(*columns, console=console, redirect_stderr=False) as bar:  # worker log lines print above it
        task = bar.add_task("train", total=total_steps, values="")

        def show() -> None:
            if latest := ray.get(board.read.remote()):
                step, values = latest
                bar.update(task, completed=step, values=describe(values))

        def redraw() -> None:
            while not stop.wait(REDRAW_EVERY_S):
                show()

        thread = threading.Thread(target=redraw, name="progress-bar", daemon=True)
        thread.start()
        try:
            yield board
        finally:
            stop.set()
            thread.join()
            show()  # where the run ended
            ray.kill(board)
