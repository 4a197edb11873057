"""The live progress bar: drawn in a terminal from what rank 0 sends through the board, absent elsewhere."""

import io
import time

import ray
from rich.console import Console

from orchestrator.train.progress import ProgressSender, live_progress


def test_no_bar_and_no_board_where_the_output_is_not_a_terminal():
    with live_progress(10, Console(file=io.StringIO())) as board:  # a file, as in a job log
        assert board is None


def test_the_bar_shows_the_step_and_values_rank_0_sent(local_ray):
    out = io.StringIO()
    with live_progress(20, Console(file=out, force_terminal=True, width=160)) as board:
        sender = ProgressSender(board)
        sender.step(10, {"loss": 1.2345, "lr": 3e-4, "tokens_per_s": 4321.0})
        sender.step(11)  # within SEND_EVERY_S of the last send: not sent
        deadline = time.monotonic() + 30
        while ray.get(board.read.remote()) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ray.get(board.read.remote())[0] == 10
    drawn = out.getvalue()
    assert "10/20" in drawn and "loss 1.2345 | lr 3.00e-04 | 4,321 tok/s" in drawn
