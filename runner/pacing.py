"""Pacing and progress for `apply` and `restore`: a rate limit across batches, and rate/ETA lines.

Pure logic with an injectable clock and sleep, so the unit tests need no waiting.

- `Pacer(max_rate)` is asked before each batch is started (`wait(n)` for a batch of n persons) and
  sleeps until the batch fits the limit. Batches start no earlier than `n_previous / max_rate` seconds
  after the previous one started, so over any interval at most `max_rate x seconds` persons plus one
  batch are started. Time spent idle or slower than the limit earns no credit: a slow stretch is never
  followed by a burst. The wait happens before the batch's rows are locked, never while they are held.
- `Progress(total)` keeps the persons done so far and renders `done/total (pct), rate/s, ETA`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

ENV_MAX_RATE = "RECON_MAX_RATE"


class Pacer:
    """At most `max_rate` persons per second, enforced across batches; None or 0 = unlimited."""

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
        self._next_start: float | None = None  # earliest start of the next batch
        self.slept = 0.0

    @property
    def limited(self) -> bool:
        return self.max_rate is not None

    def wait(self, persons: int) -> float:
        """Block until a batch of `persons` may start; returns the seconds slept."""
        if self.max_rate is None or persons <= 0:
            return 0.0
        now = self._clock()
        delay = 0.0 if self._next_start is None else self._next_start - now
        if delay > 0:
            self._sleep(delay)
            self.slept += delay
            now += delay
        self._next_start = now + persons / self.max_rate
        return max(delay, 0.0)


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
