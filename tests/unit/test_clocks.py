from orchestrator.train.clocks import Clock, Window, timed, timed_calls


class FakeTime:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timed_iteration_counts_only_the_wait_for_each_item(monkeypatch):
    clock, fake = Clock(), FakeTime()
    monkeypatch.setattr("orchestrator.train.clocks.time.perf_counter", fake)

    def slow_items():
        for item in range(3):
            fake.now += 2.0  # producing an item takes 2 s
            yield item

    for _ in timed(slow_items(), clock):
        fake.now += 5.0  # consuming it is not waiting
    assert clock.seconds == 6.0


def test_window_shares_are_per_window(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr("orchestrator.train.clocks.time.perf_counter", fake)
    reduce_clock = Clock()

    def allreduce(grads):
        fake.now += 1.0
        return grads

    reduce = timed_calls(allreduce, reduce_clock)
    window = Window({"allreduce": reduce_clock})

    fake.now += 3.0
    assert reduce("g") == "g"
    assert window.fractions(window.seconds()) == {"allreduce": 0.25}
    window.restart()
    fake.now += 2.0
    assert window.fractions(window.seconds()) == {"allreduce": 0.0}
