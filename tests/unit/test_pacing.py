"""`runner.engine.pacing`: the rate limit across batches and the progress line, on a fake clock."""

from __future__ import annotations

import pytest

from runner.engine.pacing import Pacer, Progress, Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def work(self, seconds: float) -> None:
        self.now += seconds


def pacer(rate: float | None, clock: FakeClock) -> Pacer:
    return Pacer(rate, clock=clock, sleep=clock.sleep)


def test_unlimited_never_sleeps() -> None:
    clock = FakeClock()
    for limit in (None, 0):
        p = pacer(limit, clock)
        assert not p.limited
        assert [p.wait(10_000) for _ in range(5)] == [0.0] * 5
    assert clock.sleeps == []


def test_batches_are_spaced_to_the_rate() -> None:
    """100 persons/s, batches of 50: a batch every 0.5 s when the work itself is instant."""
    clock = FakeClock()
    p = pacer(100, clock)
    starts = []
    for _ in range(5):
        p.wait(50)
        starts.append(clock.now)
    assert [round(b - a, 6) for a, b in zip(starts, starts[1:], strict=False)] == [0.5] * 4
    # 250 persons started within 2 s: the rate plus one batch at most.
    assert 250 <= 100 * (starts[-1] - starts[0]) + 50


def test_work_time_counts_towards_the_interval() -> None:
    clock = FakeClock()
    p = pacer(100, clock)
    p.wait(50)
    clock.work(0.3)  # the batch took 0.3 s of its 0.5 s
    assert p.wait(50) == pytest.approx(0.2)


def test_a_slow_stretch_earns_no_burst() -> None:
    clock = FakeClock()
    p = pacer(100, clock)
    p.wait(50)
    clock.work(10)  # far slower than the limit
    assert p.wait(50) == 0.0
    assert p.wait(50) == pytest.approx(0.5)  # not free because of the earlier slowness


def test_rate_holds_over_many_uneven_batches() -> None:
    clock = FakeClock()
    p = pacer(250, clock)
    sizes = [7, 300, 1, 64, 999, 3, 250, 120] * 5
    start = clock.now
    for size in sizes:
        p.wait(size)
        clock.work(0.01)
    started_before_last = sum(sizes[:-1])
    assert started_before_last / (clock.now - 0.01 - start) <= 250 + 1e-9


def test_a_batch_counted_in_parts_is_paced_as_a_whole() -> None:
    clock = FakeClock()
    p = pacer(100, clock)
    p.before_batch()
    for _ in range(4):
        p.count(25)  # chunks of one batch
    assert p.before_batch() == pytest.approx(1.0)
    p.count(0)
    assert p.before_batch() == 0.0  # an empty batch costs nothing


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_bad_limits_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="persons per second"):
        Pacer(bad)


def test_progress_line_shows_rate_and_eta() -> None:
    clock = FakeClock()
    progress = Progress(10_000, clock=clock)
    assert progress.line() == "0/10,000 persons (0%), -/s, ETA -"
    clock.work(4)
    progress.add(2_000)
    assert progress.rate() == 500
    assert progress.eta_seconds() == 16
    assert progress.line() == "2,000/10,000 persons (20%), 500/s, ETA 0:00:16"
    clock.work(3600)
    progress.add(1)
    assert progress.line() == "2,001/10,000 persons (20%), 1/s, ETA 4:00:07"


def test_progress_of_nothing() -> None:
    progress = Progress(0, clock=FakeClock())
    assert progress.line() == "0/0 persons, -/s, ETA -"


def test_throttle_paces_and_logs_progress_at_batch_boundaries() -> None:
    clock = FakeClock()
    lines: list[str] = []
    throttle = Throttle(100, 400, "job j", log=lines.append, every=1.5, pacer=pacer(100, clock), clock=clock)
    for _ in range(4):
        throttle.before_batch()
        throttle.count(50)
        throttle.count(50)  # one batch, two chunks
    assert clock.sleeps == [pytest.approx(1.0)] * 3
    # A line once the first batch is done, then at most one per 1.5 s, each at a batch boundary.
    assert lines == [
        "job j: 100/400 persons (25%), 100/s, ETA 0:00:03 (limited to 100/s)",
        "job j: 300/400 persons (75%), 100/s, ETA 0:00:01 (limited to 100/s)",
    ]


def test_appliers_sharing_a_pacer_share_the_limit() -> None:
    """Two appliers of one process (schedule tasks) take turns within one limit."""
    clock = FakeClock()
    shared = pacer(100, clock)
    a = Throttle(100, 100, "a", log=lambda _: None, pacer=shared, clock=clock)
    b = Throttle(100, 100, "b", log=lambda _: None, pacer=shared, clock=clock)
    a.before_batch()
    a.count(50)
    assert b.before_batch() == pytest.approx(0.5)
    b.count(50)
    assert a.before_batch() == pytest.approx(0.5)


def test_shared_pacers_are_per_limit() -> None:
    assert Pacer.shared(123.0) is Pacer.shared(123.0)
    assert Pacer.shared(123.0) is not Pacer.shared(124.0)
    assert not Pacer.shared(None).limited
