"""The chunks the engine works on: how a job cuts its stream of persons (`cut_at_batches`), and the reader
thread that reads every team's chunks a couple ahead of the engine (`ChunkReader`)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from runner.engine.stages import StageClock

T = TypeVar("T")


def cut_at_batches(items: Iterator[T], batch_size: int, page_size: int) -> Iterator[list[T]]:
    """Chunks of at most `page_size` items that never straddle a batch boundary (every `batch_size`
    items; 0: no boundary), from a stream of items."""
    chunk: list[T] = []
    in_batch = 0
    for item in items:
        chunk.append(item)
        in_batch += 1
        batch_full = batch_size > 0 and in_batch == batch_size
        if batch_full or len(chunk) >= page_size:
            yield chunk
            chunk = []
            in_batch = 0 if batch_full else in_batch
    if chunk:
        yield chunk


class _End:
    """The terminal item of a team's chunks that read to their end."""


_END = _End()


class ChunkReader(Generic[T]):
    """Reads the chunks of every team, in order, on a thread of its own, a couple of chunks ahead of
    the consumer (bounded: memory stays flat). Each team's chunks end with one terminal item: the end,
    or the error that stopped its reading (raised in the consumer)."""

    def __init__(
        self,
        chunks: Callable[[int], Iterator[list[T]]],
        team_ids: Sequence[int],
        clock: StageClock | None = None,
    ):
        self._chunks = chunks
        self._clock = clock or StageClock()  # reading a chunk counts as `fetch`
        self._team_ids = list(team_ids)
        self._queue: queue.Queue[tuple[int, list[T] | _End | BaseException]] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._cancelled: int | None = None
        self._finished: set[int] = set()  # teams whose terminal item the consumer took
        self._thread = threading.Thread(target=self._run, name="recon-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for team_id in self._team_ids:
            item: _End | BaseException
            try:
                for chunk in self._clock.timed_iter("fetch", self._chunks(team_id)):
                    if self._cancelled == team_id:
                        break
                    if not self._put((team_id, chunk)):
                        return
                item = _END
            except BaseException as exc:  # noqa: BLE001 - raised in the consumer, as the team's error
                item = exc
            if not self._put((team_id, item)):
                return

    def _put(self, item: tuple[int, list[T] | _End | BaseException]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _take(self, team_id: int) -> list[T] | _End | BaseException:
        owner, item = self._queue.get()
        if owner != team_id:
            raise RuntimeError(f"chunk reader out of step: chunk of team {owner} while running {team_id}")
        if isinstance(item, _End | BaseException):
            self._finished.add(team_id)
        return item

    def team_chunks(self, team_id: int) -> Iterator[list[T]]:
        while team_id not in self._finished:
            item = self._take(team_id)
            if isinstance(item, _End):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def finish_team(self, team_id: int) -> None:
        """Skip what is left of a team's chunks (its run stopped early, or never started)."""
        self._cancelled = team_id
        while team_id not in self._finished:
            self._take(team_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
