"""One team while the engine runs it (`TeamState`): its result (the job's team type), the counts of its
open batch (staged until the batch closes, dropped when the team fails), the persons held back for the
end-of-team retry, the open batch's outbox batches, and how the team ends (finished or failed)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Generic
from uuid import UUID

from runner.engine.job import ItemT, TeamT
from runner.rules.engine import PERSON_FAILURES, TEAM_FAILED, finished_team_status
from runner.rules.records import PersonOutcome
from runner.stores import ledger
from runner.stores.persons import OutboxBatch


class TeamState(Generic[ItemT, TeamT]):
    """Counters of one team; those of the open batch are staged until it closes."""

    def __init__(self, team: TeamT, finished: list[TeamT]):
        self.team = team
        self.finished = finished  # where the result goes once the team is done
        self.started = time.monotonic()
        self.ran = False  # all its chunks handled (its last batch may still be in flight)
        self.in_batch = 0
        self.batch_writes = 0
        self.batches = 0
        self.resumed = False
        self.failures: list[PersonOutcome[ItemT]] = []  # persons not written: version_conflict, invalid_value
        self.retry: list[PersonOutcome[ItemT]] = []  # version conflicts held back for the end-of-team retry
        self.outbox: list[OutboxBatch] = []  # of the open batch
        self.kept_messages = 0
        self._staged: Counter[str] = Counter()
        self._staged_updates = 0
        self._staged_already = 0

    @property
    def staged_count(self) -> int:
        return sum(self._staged.values())

    def stage(self, result: PersonOutcome[ItemT], *, counts_as_update: bool) -> None:
        self.in_batch += 1
        self._staged[result.outcome] += 1
        self._staged_updates += counts_as_update
        self._staged_already += result.already_done

    def hold(self, result: PersonOutcome[ItemT]) -> None:
        """A person of the open batch held back for the end-of-team retry: it fills the batch (batches
        keep their size) but counts, and is reported, once retried."""
        self.in_batch += 1
        self.retry.append(result)

    def add_outbox(self, batch: OutboxBatch) -> None:
        self.outbox.append(batch)
        if batch.messages is not None:
            self.kept_messages += len(batch.messages)

    def take_outbox(self) -> list[OutboxBatch]:
        """The open batch's outbox batches (the list fills until its write is done)."""
        batches, self.outbox = self.outbox, []
        self.kept_messages = 0
        return batches

    def accept_staged(self) -> None:
        self.team.outcomes.update(self._staged)
        self.team.updated += self._staged_updates
        self.team.already_done += self._staged_already
        self.discard_staged()

    def discard_staged(self) -> None:
        self._staged.clear()
        self._staged_updates = 0
        self._staged_already = 0
        self.in_batch = 0
        self.batch_writes = 0

    def fail(self, error: str) -> list[PersonOutcome[ItemT]]:
        """The team failed: the persons of its open batch, and those held back for the retry, count as
        `team_failed` (its committed batches stay counted). Returns the held ones: never written, their
        lines come out as team_failed too."""
        held, self.retry = self.retry, []
        self.team.outcomes[TEAM_FAILED] += self.staged_count + len(held)
        self.discard_staged()
        self.team.status = ledger.FAILED
        self.team.error = error
        return held

    def finish(self, uuid_of: Callable[[ItemT], UUID]) -> TeamT:
        """The team's end: the first persons not written, its status (when it ran to its end:
        `runner.rules.engine.finished_team_status`) and its duration."""
        team = self.team
        team.failures = [
            (str(uuid_of(f.item)), f.outcome, f.reason or "")
            for f in self.failures[: ledger.FAILURES_KEPT]
            if f.outcome in PERSON_FAILURES
        ]
        if team.status == ledger.RUNNING:
            team.status, team.error = finished_team_status(team.outcomes)
        team.duration_seconds = time.monotonic() - self.started
        return team
