"""The chunk pipeline of `runner schedule`: builds one at a time in the calling thread, applies
overlapping up to the cap (counting the chunk being built), results reported in the calling thread."""

from __future__ import annotations

import threading
import time

import pytest

from runner.jobs.chunk_run import ChunkResult
from runner.jobs.schedule import run_pipeline
from runner.rules.scheduling import Chunk


def chunks(n: int) -> list[Chunk]:
    return [Chunk(label=f"{i}-{i}", min_team_id=i, max_team_id=i) for i in range(n)]


class Recorder:
    def __init__(self, apply_seconds: float = 0.0):
        self.lock = threading.Lock()
        self.apply_seconds = apply_seconds
        self.events: list[tuple[str, str]] = []
        self.active = 0
        self.peak = 0
        self.building = 0
        self.build_threads: set[str] = set()
        self.done_threads: set[str] = set()

    def _enter(self) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def _leave(self) -> None:
        with self.lock:
            self.active -= 1

    def build(self, chunk: Chunk) -> str:
        self._enter()
        with self.lock:
            self.building += 1
            assert self.building == 1, "two builds at once"
            self.build_threads.add(threading.current_thread().name)
            self.events.append(("build", chunk.label))
        time.sleep(0.01)
        with self.lock:
            self.building -= 1
        return f"built {chunk.label}"

    def finish(self, chunk: Chunk, built: str) -> ChunkResult:
        assert built == f"built {chunk.label}"
        time.sleep(self.apply_seconds)
        with self.lock:
            self.events.append(("apply", chunk.label))
        self._leave()
        return ChunkResult(chunk, f"job-{chunk.label}", "succeeded", dry_run=False)

    def on_done(self, result: ChunkResult) -> None:
        self.done_threads.add(threading.current_thread().name)
        self.events.append(("done", result.chunk.label))


def test_one_at_a_time_runs_build_apply_done_in_order_in_this_thread():
    rec = Recorder()
    run_pipeline(chunks(3), rec.build, rec.finish, rec.on_done, max_in_flight=1)
    assert rec.events == [(step, f"{i}-{i}") for i in range(3) for step in ("build", "apply", "done")]
    assert rec.peak == 1
    assert rec.build_threads == rec.done_threads == {threading.current_thread().name}


@pytest.mark.parametrize("cap", [2, 3, 5])
def test_concurrent_applies_never_exceed_the_cap(cap):
    rec = Recorder(apply_seconds=0.05)
    run_pipeline(chunks(8), rec.build, rec.finish, rec.on_done, max_in_flight=cap)
    assert rec.peak == cap  # reached, never exceeded (the building chunk counts)
    assert sorted(label for step, label in rec.events if step == "done") == sorted(c.label for c in chunks(8))
    # Builds happen in order, in the calling thread, which also reports every result.
    assert [label for step, label in rec.events if step == "build"] == [c.label for c in chunks(8)]
    assert rec.build_threads == rec.done_threads == {threading.current_thread().name}


def test_nothing_to_run():
    rec = Recorder()
    run_pipeline([], rec.build, rec.finish, rec.on_done, max_in_flight=4)
    assert rec.events == []
