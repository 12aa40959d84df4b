"""Publishing for the engine (`Publishing`): the backlog of earlier runs before new work, then a thread
that produces each committed batch's messages (kept in memory since they were written; read back from
the outbox only past `runner.rules.engine.KEPT_MESSAGES`) and marks fully confirmed outbox batches
published. A committed batch counts even when its publishing fails afterwards. Deliveries are confirmed
asynchronously; at the end of the run every message must be confirmed (`confirm`), else the teams owning
the unconfirmed ones fail (their batches stay unpublished for the next run).

Fault point (`runner.config.faults`): `after_batch` (a batch published and marked); `mid_publish` is
the publisher's (`runner.stores.publisher`).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

from runner.config import faults
from runner.engine.stages import StageClock
from runner.stores.connections import Control
from runner.stores.persons import OutboxBatch
from runner.stores.publisher import Publisher, drain

# Committed batches waiting for the publishing thread (each holds its messages) before the engine waits.
PUBLISH_BACKLOG = 4


class Publishing:
    """The publishing thread of a run and what it found: per team the first publishing error."""

    def __init__(
        self, publisher: Publisher, control: Control, log: logging.Logger, clock: StageClock | None = None
    ):
        self.publisher = publisher
        self.clock = clock or StageClock()
        self._control = control
        self.log = log
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-publisher")
        self._futures: list[Future[None]] = []
        self._errors: dict[int, str] = {}

    def backlog(self) -> int:
        """Publish the unpublished messages of earlier runs (raises PublishError when they cannot be)."""
        with self.clock.timed("publish"):
            return drain(self._control.get(), self.publisher)

    def submit(self, team_id: int, batches: list[OutboxBatch]) -> None:
        """Hand a committed batch's outbox batches to the publishing thread; waits while PUBLISH_BACKLOG
        batches are queued (Kafka is behind)."""
        self._futures = [f for f in self._futures if not f.done()]
        with self.clock.timed("wait_publish"):
            while len(self._futures) >= PUBLISH_BACKLOG:
                self._futures.pop(0).result()
        self._futures.append(self._pool.submit(self._publish, team_id, batches))

    def _publish(self, team_id: int, batches: list[OutboxBatch]) -> None:
        """Produce a committed batch's messages and mark the outbox batches confirmed so far published
        (publishing thread)."""
        try:
            with self.clock.timed("publish"):
                produced = sum(self._control.call(self.publisher.produce_batch, batch) for batch in batches)
                self._control.call(self.publisher.mark_published)
            self.log.debug("Team %d: %d messages sent to Kafka", team_id, produced)
            faults.point("after_batch")
        except Exception as exc:  # noqa: BLE001 - reported as the team's failure at the end of the run
            self.log.exception("Team %d: publishing failed", team_id)
            self._errors.setdefault(team_id, f"publishing failed: {type(exc).__name__}: {exc}")

    def confirm(self) -> dict[int, str]:
        """Wait for the publishing thread, then for every delivery: the teams whose messages failed, with
        the error."""
        with self.clock.timed("wait_publish"):
            for future in self._futures:
                future.result()
            self._futures.clear()
            return {**self._errors, **self._control.call(self.publisher.confirm)}

    def stop(self) -> None:
        self._pool.shutdown(wait=True)
