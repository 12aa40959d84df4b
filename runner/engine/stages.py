"""Where a run's time goes (`StageClock`): wall seconds and thread CPU seconds per stage, summed over the
run. The timers wrap whole chunks and batches (never a person), so they cost nothing measurable.

The stages, by thread (stages of different threads overlap, so they do not add up to the run's wall time):

- reader thread: `fetch`, reading the chunks (diff pages from ClickHouse, backup pages from Postgres)
  and decoding them;
- engine thread: `set_write` (apply's set-based statement: a chunk staged by COPY, then locked,
  decided, written, backed up and put in the outbox by one statement), `lock` (screening a chunk,
  the persons an earlier attempt wrote, locking and reading the Postgres rows of the per-person
  path), `prefetch` (what the job reads for the locked rows: apply's ClickHouse history),
  `decide` (the per-person decisions), `results` (staging results, the sinks), `retry` (the end-of-team
  retry), and its waits: `wait_fetch` (for the reader), `wait_write` (for the writer thread's batch),
  `wait_publish` (for the publishing thread's backlog and, at the end, every delivery confirmation);
- writer thread (or the engine thread for a batch's earlier chunks): `write` (COPY and the write
  statement), `commit`;
- `run`: the whole run, its wall seconds and the process's CPU seconds (every thread);
- publishing thread: `publish` (producing a committed batch's messages, marking confirmed batches
  published; the backlog of earlier runs counts here too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

STAGES = (
    "run",  # the whole run: its wall time and the process's CPU (all threads)
    "fetch",
    "set_write",
    "lock",
    "prefetch",
    "decide",
    "results",
    "retry",
    "write",
    "commit",
    "publish",
    "wait_fetch",
    "wait_write",
    "wait_publish",
)


@dataclass
class StageTime:
    seconds: float = 0.0  # wall
    cpu_seconds: float = 0.0  # of the thread that ran it (time.thread_time)
    count: int = 0  # timed sections


class StageClock:
    """Per-stage wall and thread CPU seconds of a run; thread-safe (a stage may run on two threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stages: dict[str, StageTime] = {name: StageTime() for name in STAGES}

    def add(self, stage: str, seconds: float, cpu_seconds: float) -> None:
        with self._lock:
            entry = self.stages[stage]
            entry.seconds += seconds
            entry.cpu_seconds += cpu_seconds
            entry.count += 1

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - wall, time.thread_time() - cpu)

    def timed_iter(self, stage: str, items: Iterator[Any]) -> Iterator[Any]:
        """`items`, each `next` timed as `stage` (on the consuming thread)."""
        while True:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                item = next(items)
            except StopIteration:
                self.add(stage, time.perf_counter() - wall, time.thread_time() - cpu)
                return
            self.add(stage, time.perf_counter() - wall, time.thread_time() - cpu)
            yield item

    def summary(self) -> dict[str, dict[str, float]]:
        """The stages as the run summary shows them: {stage: {"seconds", "cpu_seconds"}} (rounded)."""
        with self._lock:
            return {
                name: {"seconds": round(t.seconds, 6), "cpu_seconds": round(t.cpu_seconds, 6)}
                for name, t in self.stages.items()
            }

    def log_line(self) -> str:
        """One line: `stage wall/cpu` for every stage that ran."""
        with self._lock:
            parts = [
                f"{name} {t.seconds:.2f}/{t.cpu_seconds:.2f}" for name, t in self.stages.items() if t.count
            ]
        return ", ".join(parts) or "none"
