"""Pacing and progress for `apply` and `restore`: a rate limit across batches, and rate/ETA lines.

Pure logic with an injectable clock and sleep, so the unit tests need no waiting.

- `Pacer(max_rate)`: the engine calls `before_batch()` when it is about to start a batch (holding no
  row locks) and `count(n)` for the persons it takes on; `wait(n)` does both. A batch starts no earlier
  than `n_previous / max_rate` seconds after the previous one started, where `n_previous` is what the
  previous batch counted, so over any interval at most `max_rate x seconds` persons plus one batch are
  started. Time spent idle or slower than the limit earns no credit: a slow stretch is never followed by
  a burst.
- `Progress(total)` keeps the persons done so far and renders `done/total (pct), rate/s, ETA`.
- `Throttle` is the two together, as the engine's batch loop uses them: the progress line is logged
  (stderr) at most every 10 seconds, at a batch boundary.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

ENV_MAX_RATE = "RECON_MAX_RATE"


class Pacer:
    """At most `max_rate` persons per second, enforced across batches; None or 0 = unlimited.

    Counting reserves time: `count(n)` moves the earliest start of the next batch `n / max_rate`
    seconds past the later of itself and now (so idle time earns no credit), and `before_batch()`
    sleeps until then. Thread-safe: appliers running in threads of one process (`runner schedule`)
    share one pacer (`shared()`), so the limit holds for the process as a whole."""

    def __init__(
        self,
        max_rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if max_rate is not None and (not math.isfinite(max_rate) or max_rate < 0):
            raise ValueError(f"max_rate must be a positive number of persons per second, got {max_rate!r}")
        self.max_rate = max_rate or None
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_start: float | None = None  # earliest start of the next batch
        self.slept = 0.0

    @classmethod
    def shared(cls, max_rate: float | None) -> Pacer:
        """The process-wide pacer for this limit."""
        with _SHARED_LOCK:
            pacer = _SHARED.get(max_rate or None)
            if pacer is None:
                pacer = _SHARED[max_rate or None] = cls(max_rate)
            return pacer

    @property
    def limited(self) -> bool:
        return self.max_rate is not None

    def before_batch(self) -> float:
        """Block until the next batch may start; returns the seconds slept. Call it only while holding
        no row locks: the wait must never keep live traffic waiting."""
        if self.max_rate is None:
            return 0.0
        with self._lock:
            target = self._next_start
        delay = 0.0 if target is None else target - self._clock()
        if delay <= 0:
            return 0.0
        self._sleep(delay)
        with self._lock:
            self.slept += delay
        return delay

    def count(self, persons: int) -> None:
        """Persons the current batch takes on (call as they are taken; a batch may count several times)."""
        if self.max_rate is None or persons <= 0:
            return
        with self._lock:
            now = self._clock()
            start = now if self._next_start is None else max(self._next_start, now)
            self._next_start = start + persons / self.max_rate

    def wait(self, persons: int) -> float:
        """`before_batch()` then `count(persons)`: one call per batch when its size is known upfront."""
        slept = self.before_batch()
        self.count(persons)
        return slept


_SHARED: dict[float | None, Pacer] = {}
_SHARED_LOCK = threading.Lock()


class Progress:
    """Persons done out of a total, with the observed rate and an ETA."""

    def __init__(self, total: int, *, clock: Callable[[], float] = time.monotonic):
        self.total = max(0, total)
        self.done = 0
        self._clock = clock
        self._started = clock()

    def add(self, persons: int) -> None:
        self.done += persons

    def rate(self) -> float | None:
        """Persons per second since the start; None before anything is done."""
        elapsed = self._clock() - self._started
        if self.done <= 0 or elapsed <= 0:
            return None
        return self.done / elapsed

    def eta_seconds(self) -> float | None:
        rate = self.rate()
        if rate is None:
            return None
        return max(0, self.total - self.done) / rate

    def line(self, what: str = "persons") -> str:
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = self.rate()
        eta = self.eta_seconds()
        return (
            f"{self.done:,}/{self.total:,} {what}{pct}, "
            f"{'-' if rate is None else f'{rate:,.0f}'}/s, ETA {'-' if eta is None else _clock_text(eta)}"
        )


def _clock_text(seconds: float) -> str:
    whole = int(math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Throttle:
    """What the engine holds: the pacer, and progress logged on stderr at most every `every` seconds
    (and once the first batch ran), with the rate, the ETA and the limit."""

    def __init__(
        self,
        max_rate: float | None,
        total: int,
        what: str,
        *,
        log: Callable[[str], None] | None = None,
        every: float = 10.0,
        pacer: Pacer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        # Default: the process-wide pacer of this limit, shared with the other appliers of the process.
        self.pacer = Pacer.shared(max_rate) if pacer is None else pacer
        self.progress = Progress(total, clock=clock)
        self.what = what
        self._log = log or logging.getLogger("runner.progress").info
        self._every = every
        self._clock = clock
        self._last_line: float | None = None
        self._taken = 0  # persons of the batch in progress

    def start(self, total: int) -> None:
        """The run begins: `total` persons to go."""
        self.progress = Progress(total, clock=self._clock)
        self._taken = 0

    def before_batch(self) -> float:
        """Call when about to start a batch while holding no row locks: the previous batch's persons
        count as done, the limit is waited for, then the progress line is logged when due."""
        self.progress.add(self._taken)
        self._taken = 0
        slept = self.pacer.before_batch()
        if self.progress.done:
            now = self._clock()
            if self._last_line is None or now - self._last_line >= self._every:
                self._last_line = now
                self._log(self.line())
        return slept

    def count(self, persons: int) -> None:
        """Persons the current batch takes on."""
        self.pacer.count(persons)
        self._taken += max(0, persons)

    def line(self) -> str:
        limit = f" (limited to {self.pacer.max_rate:,.0f}/s)" if self.pacer.max_rate else ""
        return f"{self.what}: {self.progress.line()}{limit}"
