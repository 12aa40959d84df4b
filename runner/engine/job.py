"""What a job supplies to the batch engine (`Job`), where the engine sends its results (`EngineSink`), and
the results it counts: a person's `PersonOutcome` (`runner.rules.records`, typed by the job's item), a
team's `TeamCounts` (a job's team type extends it), the run's `EngineRun`.

The engine is generic in three types a job fixes: its item (the person to handle: apply's `PersonDiff`,
restore's `BackupEntry`), its team result (apply's `TeamResult`, restore's `TeamRestore`), and what it
reads for a chunk's locked rows before deciding (apply: ClickHouse's historic state by uuid; restore:
the rows' metadata maps by pk).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

import psycopg

from runner.rules.engine import TEAM_FAILED
from runner.rules.records import AppliedByJob, PersonOutcome, PersonWrite, PgPerson
from runner.stores import ledger, metrics
from runner.stores.persons import OutboxBatch

ItemT = TypeVar("ItemT")  # a job's person to handle
TeamT = TypeVar("TeamT", bound="TeamCounts")
PrefetchT = TypeVar("PrefetchT")  # what a job reads for a chunk's locked rows before deciding
ResultT_contra = TypeVar("ResultT_contra", contravariant=True)
TeamT_contra = TypeVar("TeamT_contra", contravariant=True)


@dataclass
class TeamCounts:
    """A team's result as the engine counts it: its status and counts by outcome. `updated` counts the
    persons written (apply: updated, restore: restored; none in a dry run), `already_done` those an
    earlier attempt of the job wrote (reported, not written again)."""

    team_id: int
    status: str = ledger.RUNNING
    error: str | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    updated: int = 0
    already_done: int = 0
    commits: int = 0
    duration_seconds: float = 0.0
    # Persons not written (version_conflict, invalid_value): (uuid, outcome, reason), the first ones.
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        """Persons handled: every outcome but `team_failed` (R9.14). A failed team's rolled-back batch
        handled nobody: its persons count in `outcomes` (and the tables' failed column), not here."""
        return sum(n for outcome, n in self.outcomes.items() if outcome != TEAM_FAILED)

    @property
    def skipped(self) -> int:
        return self.processed - self.updated


@dataclass
class SetDecided(Generic[ItemT]):
    """What a job's set-based write (`Job.write_set`) settled of a chunk, in the batch's transaction:
    the persons' results by uuid (final as far as the write goes: written, unchanged, or changed under
    the write), how many it updated, and its outbox batches. The chunk's other persons are the
    engine's, on the per-person path."""

    results: dict[UUID, PersonOutcome[ItemT]] = field(default_factory=dict)
    updated: int = 0
    outbox: list[OutboxBatch] = field(default_factory=list)


@dataclass
class EngineRun(Generic[TeamT]):
    teams: list[TeamT] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0
    published_backlog: int = 0
    metrics: list[metrics.Counter] = field(default_factory=list)
    quarantined: int = 0
    # Wall and thread CPU seconds per stage (runner.engine.stages.StageClock.summary).
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(t.status != ledger.SUCCEEDED for t in self.teams)


class EngineSink(Protocol[ResultT_contra, TeamT_contra]):
    """Where results go. Person results are staged while their batch is open and become final when it
    closes (`batch_closed`), or turn into `team_failed` when the team fails (`batch_failed`)."""

    def stage(self, result: ResultT_contra) -> None: ...
    def batch_closed(self) -> None: ...
    def batch_failed(self) -> None: ...
    def team_finished(self, team: TeamT_contra) -> None: ...


class Job(Protocol[ItemT, TeamT, PrefetchT]):
    """What apply and restore supply to the engine."""

    ledger_job_id: str  # the id the job's ledger rows, backups and outbox rows carry
    ledger_kind: str
    label: str  # in progress lines and the rate limiter's messages
    dry_run: bool
    batch_size: int
    backup: bool
    max_rate: float | None
    set_based: bool  # whether the job has a set-based write (`write_set`) and uses it
    updated_outcome: str  # the outcome that counts as an update (once written)
    updated_label: str  # what the logs call those updates ("updated", "restored")
    nothing_to: str  # what the logs say a team without persons had nothing to do ("reconcile", "restore")
    outcomes: tuple[str, ...]  # the ledger's counts by outcome
    already_key: str  # the ledger's count of persons an earlier attempt wrote
    log: logging.Logger

    def ledger_view(self) -> dict[str, Any]: ...
    def ledger_chunk(self, team_id: int) -> str: ...
    def team_intro(self, team_id: int) -> str: ...
    def new_team(self, team_id: int, status: str = ledger.RUNNING, error: str | None = None) -> TeamT: ...
    def connect(self) -> psycopg.Connection: ...
    def chunks(self, team_id: int) -> Iterator[list[ItemT]]: ...
    def uuid_of(self, item: ItemT) -> UUID: ...
    def describe(self, item: ItemT) -> str: ...
    def screen(
        self, team_id: int, chunk: list[ItemT]
    ) -> tuple[list[ItemT], dict[UUID, PersonOutcome[ItemT]]]: ...
    def prefetch(
        self, conn: psycopg.Connection, team_id: int, items: list[ItemT], rows: dict[UUID, PgPerson]
    ) -> PrefetchT: ...
    def decide(
        self, item: ItemT, pg: PgPerson, prefetched: PrefetchT
    ) -> tuple[PersonOutcome[ItemT], PersonWrite | None]: ...
    def write_set(
        self, conn: psycopg.Connection, team_id: int, items: list[ItemT], *, keep_messages: bool
    ) -> SetDecided[ItemT] | None: ...
    def already_done(self, item: ItemT, earlier: AppliedByJob) -> PersonOutcome[ItemT]: ...
    def unsettled(self, item: ItemT, outcome: str, reason: str | None = None) -> PersonOutcome[ItemT]: ...
    def run_metrics(self, run: EngineRun[TeamT]) -> list[metrics.Counter]: ...
