"""`runner apply`: the diff table applied to Postgres, then published to Kafka.

Apply is a job of the batch engine (`runner.engine`), which runs the loop apply and restore share:
ledger, backlog of unpublished messages, row locks with retries, writes, commits, publishing and
delivery confirmation, the end-of-team retry, the team's error boundary, counters, and the pipelining
(a reader thread reads chunks ahead, batches alternate between two connections, a writer thread
commits one batch while the next is locked and decided, a publishing thread produces committed
batches). This module supplies what is apply's own (`ApplyJob`):

- the chunk source: per team, persons read from the diff table in keyset pages and decoded
  (`runner.stores.diffs`), cut into chunks of at most a page that never straddle a batch boundary;
- per chunk, the set-based write (`runner.stores.apply_sets`, `write_set`): the persons at their
  baseline version are locked, decided, written, backed up and put in the outbox by one statement, from
  the COPY lines the reader's query built; the rest (rows not locked, three-way merges, a chunk with a
  value Postgres refuses) take the per-person path below (`--write-path per-person`: everyone);
- per chunk, before deciding: one ClickHouse query for the historic state of the locked persons that
  need the three-way merge (their row moved past the diff's baseline version);
- the decision per person (`runner.rules.apply`, pure): outcome, merge and version rule;
- a person an earlier attempt of this job applied (found through its outbox rows) is reported as that
  update, never written again;
- the ledger view (kind `apply`, the diff's invocation ids) and the metrics (`runner.stores.metrics`, written
  to ClickHouse).

Every `batch_size` processed persons the batch is closed: committed if it wrote anything, else its row
locks are released (R9.11). Memory holds a few chunks, whatever the team's size.

Outcomes (R7.4):
- `success`: updated (in a dry run: would be), or already updated by an earlier attempt of this job.
- `no_changes`: the merge changes nothing.
- `not_found`: no Postgres row for (team, uuid), or no ClickHouse row at or above the baseline version
  for the three-way merge.
- `version_conflict`: another transaction held the person's row on each of 3 quick attempts to lock it,
  or the row changed between its lock and the write (the update only takes rows still at the version
  read; backups and outbox rows are written for the rows it changed), and the end-of-team retry, which
  waits for the row lock (up to lock_timeout), re-reads the row and merges against it, did not get it
  either.
- `invalid_value`: Postgres cannot store a value of the person's diff (found up front, or by writing a
  refused chunk again person by person under savepoints); the person alone fails, with its reason.
- `team_failed`: the person's batch was rolled back because the team failed.

A team with `version_conflict` or `invalid_value` persons is `incomplete` (exit code 1). Values are
exact: the merge runs on jsonb in the write statement (`runner.stores.persons`), so keys the diff does not
touch are never decoded, set values are ClickHouse's texts, and the Kafka message is built from the
jsonb Postgres then holds. A lost Postgres connection fails the team being applied (its committed
batches count); the ledger connection is reopened to record it, the next team gets new connections.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import psycopg
from clickhouse_connect.driver.client import Client

from runner.engine.job import EngineRun, SetDecided, TeamCounts
from runner.engine.loop import Engine
from runner.engine.reader import cut_at_batches
from runner.rules import apply as apply_rules
from runner.rules.apply import NO_CHANGES, OUTCOMES, SUCCESS, PersonResult
from runner.rules.engine import (
    CHANGED_UNDER_WRITE,
    INVALID_VALUE,
    NOT_FOUND,
    TEAM_FAILED,
    VERSION_CONFLICT,
)
from runner.rules.merge import PersonDiff, conflict_filter, json_loads
from runner.rules.records import PersonOutcome
from runner.rules.scheduling import chunk_id
from runner.stores import apply_sets, connections, diffs, ledger, metrics, persons
from runner.stores.publisher import Publisher

__all__ = [
    "INVALID_VALUE",
    "NOT_FOUND",
    "NO_CHANGES",
    "OUTCOMES",
    "SUCCESS",
    "TEAM_FAILED",
    "VERSION_CONFLICT",
    "ApplyConfig",
    "ApplyJob",
    "Applier",
    "PersonResult",
    "RunResult",
    "Sink",
    "TeamResult",
]

log = logging.getLogger("runner.apply")


@dataclass(frozen=True)
class ApplyConfig:
    job_id: str
    dry_run: bool = False
    team_ids: tuple[int, ...] = ()
    batch_size: int = 100
    page_size: int = 10_000
    backup: bool = True
    publish_timeout: float = 30.0
    max_rate: float | None = None  # persons per second (runner.engine.pacing); None = unlimited
    # How many updated persons per chunk carry their properties before/after in their results (the
    # human output's samples); None: every person (the JSON lines). The set-based write returns them.
    person_details: int | None = None
    # The set-based write (runner.stores.apply_sets) for the persons at their baseline version; False:
    # every person on the per-person path (`runner apply --write-path per-person`).
    set_based: bool = True

    def ledger_view(self) -> dict[str, Any]:
        return {
            "team_ids": list(self.team_ids) or None,
            "batch_size": self.batch_size,
            "page_size": self.page_size,
            "backup_enabled": self.backup,
            "publish_timeout": self.publish_timeout,
        }


# A team of an apply run, as the engine counts it: `updated` persons updated, `already_done` those an
# earlier attempt of this job updated (the ledger's `already_applied`).
TeamResult = TeamCounts


@dataclass
class RunResult:
    job_id: str
    dry_run: bool
    teams: list[TeamResult]
    error: str | None = None
    duration_seconds: float = 0.0
    published_backlog: int = 0
    metrics: list[metrics.Counter] = field(default_factory=list)
    quarantined: int = 0  # messages of this job Kafka rejected for good (runner.stores.outbox): exit 1
    # Wall and thread CPU seconds per stage of the engine (runner.engine.stages).
    stages: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Exit code 1: the run stopped early, a team failed, or a team is incomplete."""
        return self.error is not None or any(t.status != ledger.SUCCEEDED for t in self.teams)

    def total(self, attribute: str) -> int:
        return sum(getattr(t, attribute) for t in self.teams)


class Sink(Protocol):
    """Where results go. Person results are staged while their batch is open and become final when it
    closes (`batch_closed`), or turn into `team_failed` when the team fails (`batch_failed`)."""

    def run_started(self, job_id: str, dry_run: bool, teams: Sequence[diffs.TeamSummary]) -> None: ...
    def stage(self, result: PersonResult) -> None: ...
    def batch_closed(self) -> None: ...
    def batch_failed(self) -> None: ...
    def team_finished(self, team: TeamResult) -> None: ...
    def run_finished(self, run: RunResult) -> None: ...


class Applier:
    """A `runner apply` run: the engine (`runner.engine.loop`) with apply's job."""

    def __init__(
        self,
        config: ApplyConfig,
        *,
        clickhouse: Client,
        pg_url: str,
        source_database: str,
        target_schema: str,
        publisher: Publisher | None,
        sink: Sink,
    ):
        if config.batch_size < 0:
            raise ValueError("batch_size must be >= 0")
        self.config = config
        self.sink = sink
        self.job = ApplyJob(config, clickhouse, pg_url, source_database, target_schema)
        self.engine = Engine(self.job, pg_url=pg_url, publisher=publisher, sink=sink)

    def run(self, teams: Sequence[diffs.TeamSummary]) -> RunResult:
        """Apply every given team. The caller validated the configuration (exit 2 territory)."""
        cfg = self.config
        team_ids = [t.team_id for t in teams]
        log.info(
            "Starting reconciliation job %s: %d teams (first: %s), dry_run=%s, batch_size=%d, backup=%s",
            cfg.job_id,
            len(teams),
            team_ids[:10],
            cfg.dry_run,
            cfg.batch_size,
            cfg.backup,
        )
        self.sink.run_started(cfg.job_id, cfg.dry_run, teams)
        self.job.start(teams)
        run = self.engine.run(team_ids, sum(t.persons_with_diff for t in teams))
        result = RunResult(
            job_id=cfg.job_id,
            dry_run=cfg.dry_run,
            teams=run.teams,
            error=run.error,
            duration_seconds=run.duration_seconds,
            published_backlog=run.published_backlog,
            metrics=run.metrics,
            quarantined=run.quarantined,
            stages=run.stages,
        )
        log.info(
            "Job %s done: %d teams succeeded, %d failed; processed=%d updated=%d skipped=%d (%.1fs)",
            cfg.job_id,
            sum(t.status == ledger.SUCCEEDED for t in result.teams),
            sum(t.status != ledger.SUCCEEDED for t in result.teams),
            result.total("processed"),
            result.total("updated"),
            result.total("skipped"),
            result.duration_seconds,
        )
        self.sink.run_finished(result)
        return result


class ApplyJob:
    """What apply supplies to the batch engine (`runner.engine.job.Job`)."""

    ledger_kind = "apply"
    updated_outcome = SUCCESS
    updated_label = "updated"
    nothing_to = "reconcile"
    outcomes: tuple[str, ...] = OUTCOMES
    already_key = "already_applied"
    log = log

    def __init__(
        self, config: ApplyConfig, clickhouse: Client, pg_url: str, source_database: str, target_schema: str
    ):
        self.config = config
        self.ch = clickhouse
        self.pg_url = pg_url
        self.source_db = source_database
        self.schema = target_schema
        self.ledger_job_id = config.job_id
        self.label = f"job {config.job_id}"
        self.dry_run = config.dry_run
        self.batch_size = config.batch_size
        self.backup = config.backup
        self.max_rate = config.max_rate
        self.set_based = config.set_based
        self._teams: dict[int, diffs.TeamSummary] = {}
        self._chunk_id = ""

    def start(self, teams: Sequence[diffs.TeamSummary]) -> None:
        self._teams = {t.team_id: t for t in teams}
        self._chunk_id = chunk_id([t.team_id for t in teams])

    def ledger_view(self) -> dict[str, Any]:
        invocations = sorted({t.invocation_id for t in self._teams.values()})
        return {**self.config.ledger_view(), "diff_invocation_ids": invocations}

    def ledger_chunk(self, team_id: int) -> str:
        return self._chunk_id

    def team_intro(self, team_id: int) -> str:
        team = self._teams[team_id]
        return (
            f"reading the diff ({team.persons_with_diff} persons with diffs, mode {team.mode}, "
            f"batch_size {self.batch_size})"
        )

    def new_team(self, team_id: int, status: str = ledger.RUNNING, error: str | None = None) -> TeamResult:
        return TeamResult(team_id, status=status, error=error)

    def connect(self) -> psycopg.Connection:
        return connections.connect(self.pg_url, read_only=self.dry_run)

    def chunks(self, team_id: int) -> Iterator[list[PersonDiff]]:
        """Chunks of at most a page that never straddle a batch boundary (reader thread)."""
        cfg = self.config
        diffs_of_team = diffs.iter_team_diffs(self.ch, self.schema, team_id, cfg.page_size)
        return cut_at_batches(diffs_of_team, cfg.batch_size, cfg.page_size)

    def uuid_of(self, item: PersonDiff) -> UUID:
        return item.person_uuid

    def describe(self, item: PersonDiff) -> str:
        return str(item.person_uuid)

    def screen(
        self, team_id: int, chunk: list[PersonDiff]
    ) -> tuple[list[PersonDiff], dict[UUID, PersonResult]]:
        """The diffs as merged (conflicting operations filtered), and the persons that fail up front: a
        value Postgres cannot store."""
        chunk = [conflict_filter(d) for d in chunk]
        uuids = {d.person_uuid for d in chunk}
        if len(uuids) != len(chunk):
            raise ValueError(f"team {team_id}: the diff table lists a person more than once in one page")
        early: dict[UUID, PersonResult] = {}
        for d in chunk:
            if d.invalid is not None:
                early[d.person_uuid] = PersonOutcome(d, INVALID_VALUE, reason=d.invalid)
                log.warning("Person %s of team %d: %s", d.person_uuid, team_id, d.invalid)
        return chunk, early

    def prefetch(
        self,
        conn: psycopg.Connection,
        team_id: int,
        items: list[PersonDiff],
        rows: dict[UUID, persons.PgPerson],
    ) -> dict[UUID, dict[str, Any]]:
        """ClickHouse's historic state at the baseline of the persons whose row moved past it."""
        three_way = apply_rules.three_way_pairs(items, rows)
        return diffs.historic_properties(self.ch, self.source_db, team_id, three_way)

    def decide(
        self, item: PersonDiff, pg: persons.PgPerson, prefetched: dict[UUID, dict[str, Any]]
    ) -> tuple[PersonResult, persons.PersonWrite | None]:
        historic = prefetched.get(item.person_uuid)
        return apply_rules.decide(item, pg, historic, dry_run=self.dry_run, backup=self.backup)

    def write_set(
        self, conn: psycopg.Connection, team_id: int, items: list[PersonDiff], *, keep_messages: bool
    ) -> SetDecided[PersonDiff] | None:
        """The happy path in one statement (`runner.stores.apply_sets`): the persons at their baseline
        version locked, decided, written, backed up and put in the outbox. The others (rows not
        locked, rows that moved past the baseline: the three-way merge) are left to the per-person path,
        and so is the whole chunk when Postgres refuses one of its values (None)."""
        written = apply_sets.write_set(
            conn,
            self.ledger_job_id,
            team_id,
            items,
            backup=self.backup,
            keep_messages=keep_messages,
            details=self.config.person_details,
        )
        if written is None:
            log.info("Team %d: Postgres refused a value of a chunk; writing it person by person", team_id)
            return None
        results: dict[UUID, PersonResult] = {}
        details = written.details
        null_version = written.null_version
        for ord_ in written.updated:
            d = items[ord_]
            before, after = (None, None) if ord_ not in details else map(json_loads, details[ord_])
            version = None if ord_ in null_version else d.baseline_version
            results[d.person_uuid] = PersonOutcome(
                d, SUCCESS, before, after, version, apply_rules.version_after(version, d.baseline_version)
            )
        for ord_ in written.unchanged:
            d = items[ord_]
            before = None if ord_ not in details else json_loads(details[ord_][0])
            version = None if ord_ in null_version else d.baseline_version
            results[d.person_uuid] = PersonOutcome(d, NO_CHANGES, before, before, version, version)
        for ord_ in written.lost:
            d = items[ord_]
            log.info("Person %s of team %d: its row changed since it was read", d.person_uuid, team_id)
            results[d.person_uuid] = PersonOutcome(d, VERSION_CONFLICT, reason=CHANGED_UNDER_WRITE)
        return SetDecided(results, len(written.updated), written.outbox)

    def already_done(self, item: PersonDiff, earlier: persons.AppliedByJob) -> PersonResult:
        return apply_rules.already_applied(item, earlier)

    def unsettled(self, item: PersonDiff, outcome: str, reason: str | None = None) -> PersonResult:
        return PersonOutcome(item, outcome, reason=reason)

    def run_metrics(self, run: EngineRun[TeamResult]) -> list[metrics.Counter]:
        result = RunResult(self.config.job_id, self.dry_run, run.teams, run.error, run.duration_seconds)
        failed = [t.team_id for t in result.teams if t.status != ledger.SUCCEEDED]
        if failed:
            log.warning("Job %s: teams failed: %s", self.config.job_id, failed)
        counters = metrics.apply_counters(
            self._chunk_id,
            processed=result.total("processed"),
            updated=result.total("updated"),
            skipped=result.total("skipped"),
            teams_succeeded=sum(t.status == ledger.SUCCEEDED for t in result.teams),
            failed_team_ids=failed,
            duration_seconds=result.duration_seconds,
        )
        if not self.dry_run:
            metrics.write(self.ch, self.source_db, counters)
        return counters
