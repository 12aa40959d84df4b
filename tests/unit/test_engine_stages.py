"""The engine's per-stage timers (`runner.engine.stages`): what the run summary and the log line show."""

from __future__ import annotations

import threading
import time

from runner.engine.stages import STAGES, StageClock


def test_summary_lists_every_stage_with_wall_and_cpu_seconds():
    clock = StageClock()
    with clock.timed("decide"):
        sum(range(200_000))  # CPU
    with clock.timed("wait_write"):
        time.sleep(0.02)  # wall, little CPU
    summary = clock.summary()
    assert list(summary) == list(STAGES)
    assert all(set(t) == {"seconds", "cpu_seconds"} for t in summary.values())
    assert summary["decide"]["cpu_seconds"] > 0
    assert summary["wait_write"]["seconds"] >= 0.02
    assert summary["wait_write"]["cpu_seconds"] < summary["wait_write"]["seconds"]
    assert summary["fetch"] == {"seconds": 0.0, "cpu_seconds": 0.0}


def test_timed_iter_times_each_next_and_passes_items_through():
    clock = StageClock()

    def slow():
        for i in range(3):
            time.sleep(0.01)
            yield i

    assert list(clock.timed_iter("fetch", slow())) == [0, 1, 2]
    assert clock.stages["fetch"].count == 4  # three items and the end
    assert clock.stages["fetch"].seconds >= 0.03


def test_stages_sum_across_threads_and_the_log_line_shows_those_that_ran():
    clock = StageClock()
    threads = [threading.Thread(target=lambda: clock.add("write", 1.0, 0.5)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.summary()["write"] == {"seconds": 4.0, "cpu_seconds": 2.0}
    assert clock.log_line() == "write 4.00/2.00"
    assert StageClock().log_line() == "none"
