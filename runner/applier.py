"""`runner apply`: the diff table applied to Postgres, then published to Kafka.

Per team, persons are read from the diff table in keyset pages and handled in chunks (at most a page,
cut at batch boundaries). A chunk costs a fixed number of statements whatever its size: one
`SELECT ... FOR UPDATE SKIP LOCKED`, one ClickHouse query for the historic state of the persons that
need the three-way merge, one COPY and one statement writing backups, updates and outbox rows
(`runner.persons`); on a re-run of a job, one lookup of the persons it already applied. Every
`batch_size` processed persons the batch is closed: committed if it wrote anything, else its row locks
are released (R9.11).

Three threads keep Postgres, ClickHouse and Kafka busy at once: this one locks and merges a chunk; the
writer thread writes it (and commits at a batch's end) while this one reads and decodes the next chunk;
the publishing thread produces each committed batch's outbox rows and marks confirmed deliveries
published. Deliveries are confirmed asynchronously; at the end of the run every message must be
confirmed, else the teams owning the unconfirmed ones fail (their rows stay in the outbox for the next
run). Memory holds a couple of chunks, whatever the team's size.

Outcomes (R7.4), as decided here:
- `success`: updated (in a dry run: would be), or already updated by an earlier attempt of this job.
- `no_changes`: the merge changes nothing.
- `not_found`: no Postgres row for (team, uuid), or no ClickHouse row at or above the baseline version
  for the three-way merge.
- `version_conflict`: another transaction held the person's row on each of 3 attempts to lock it (the
  row locks make the original's version-checked UPDATE race impossible, so this is what remains of it).
- `team_failed`: the person's batch was rolled back because the team failed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import psycopg
from clickhouse_connect.driver.client import Client

from runner import diffs, faults, ledger, metrics, persons
from runner.merge import (
    PersonDiff,
    conflict_filter,
    kafka_message,
    pending_operations_json,
    simple_merge,
    three_way_merge,
)
from runner.publisher import Publisher, PublishError, drain

log = logging.getLogger("runner.apply")

SUCCESS = "success"
NO_CHANGES = "no_changes"
NOT_FOUND = "not_found"
VERSION_CONFLICT = "version_conflict"
TEAM_FAILED = "team_failed"
OUTCOMES = (SUCCESS, NO_CHANGES, NOT_FOUND, VERSION_CONFLICT, TEAM_FAILED)

LOCK_ATTEMPTS = 3
LOCK_RETRY_WAITS = (0.2, 1.0)  # seconds before the 2nd and 3rd attempt

REQUIRED_MIGRATION = 4


@dataclass(frozen=True)
class ApplyConfig:
    job_id: str
    dry_run: bool = False
    team_ids: tuple[int, ...] = ()
    batch_size: int = 100
    page_size: int = 10_000
    backup: bool = True
    publish_timeout: float = 30.0

    def ledger_view(self) -> dict[str, Any]:
        return {
            "team_ids": list(self.team_ids) or None,
            "batch_size": self.batch_size,
            "page_size": self.page_size,
            "backup_enabled": self.backup,
            "publish_timeout": self.publish_timeout,
        }


@dataclass(slots=True)
class PersonResult:
    diff: PersonDiff
    outcome: str
    properties_before: dict[str, Any] | None = None
    properties_after: dict[str, Any] | None = None
    version_before: int | None = None
    version_after: int | None = None
    already_applied: bool = False


@dataclass
class TeamResult:
    team_id: int
    status: str = ledger.RUNNING
    error: str | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    updated: int = 0
    commits: int = 0
    already_applied: int = 0
    duration_seconds: float = 0.0

    @property
    def processed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def skipped(self) -> int:
        return self.processed - self.updated


@dataclass
class RunResult:
    job_id: str
    dry_run: bool
    teams: list[TeamResult]
    error: str | None = None
    duration_seconds: float = 0.0
    published_backlog: int = 0
    metrics: list[metrics.Counter] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(t.status == ledger.FAILED for t in self.teams)

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
        self.ch = clickhouse
        self.pg_url = pg_url
        self.source_db = source_database
        self.schema = target_schema
        self.publisher = publisher
        self.sink = sink
        self.conn: psycopg.Connection | None = None
        self.control: psycopg.Connection | None = None
        # One thread writes to Postgres while this one reads ClickHouse; one publishes committed batches.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-writer")
        self._publish_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-publisher")
        self._publishing: list[Future[None]] = []
        self._publish_errors: dict[int, str] = {}

    # --- run --------------------------------------------------------------------------------------

    def run(self, teams: Sequence[diffs.TeamSummary]) -> RunResult:
        """Apply every given team. The caller validated the configuration (exit 2 territory)."""
        cfg = self.config
        started = time.monotonic()
        result = RunResult(job_id=cfg.job_id, dry_run=cfg.dry_run, teams=[])
        team_ids = [t.team_id for t in teams]
        chunk = metrics.chunk_id(team_ids)
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
        self.control = psycopg.connect(self.pg_url, autocommit=True)
        try:
            if not cfg.dry_run:
                assert self.publisher is not None
                invocations = sorted({t.invocation_id for t in teams})
                ledger.start_run(
                    self.control,
                    cfg.job_id,
                    "apply",
                    {**cfg.ledger_view(), "diff_invocation_ids": invocations},
                )
                try:
                    result.published_backlog = drain(self.control, self.publisher)
                except PublishError as exc:
                    result.error = f"unpublished messages of earlier runs could not be published: {exc}"
                    log.error("Not starting new work: %s", result.error)
            if result.error is None:
                self.conn = persons.connect(self.pg_url, read_only=cfg.dry_run)
                for team in teams:
                    team_result = self._run_team(team, chunk)
                    result.teams.append(team_result)
                    self.sink.team_finished(team_result)
                self._confirm_deliveries(result.teams)
            else:
                result.teams = [
                    TeamResult(t.team_id, status=ledger.FAILED, error=f"not started: {result.error}")
                    for t in teams
                ]
            result.duration_seconds = time.monotonic() - started
            failed = [t.team_id for t in result.teams if t.status == ledger.FAILED]
            if failed:
                log.warning("Job %s: teams failed: %s", cfg.job_id, failed)
            result.metrics = metrics.apply_counters(
                chunk,
                processed=result.total("processed"),
                updated=result.total("updated"),
                skipped=result.total("skipped"),
                teams_succeeded=sum(t.status == ledger.SUCCEEDED for t in result.teams),
                failed_team_ids=failed,
                duration_seconds=result.duration_seconds,
            )
            if not cfg.dry_run:
                metrics.write(self.ch, self.source_db, result.metrics)
                ledger.finish_run(
                    self.control, cfg.job_id, ledger.FAILED if result.failed else ledger.SUCCEEDED
                )
            log.info(
                "Job %s done: %d teams succeeded, %d failed; processed=%d updated=%d skipped=%d (%.1fs)",
                cfg.job_id,
                sum(t.status == ledger.SUCCEEDED for t in result.teams),
                len(failed),
                result.total("processed"),
                result.total("updated"),
                result.total("skipped"),
                result.duration_seconds,
            )
            self.sink.run_finished(result)
            return result
        finally:
            for conn in (self.conn, self.control):
                if conn is not None:
                    conn.close()
            self._writer.shutdown(wait=True)
            self._publish_pool.shutdown(wait=True)
            if self.publisher is not None:
                self.publisher.close()

    # --- team -------------------------------------------------------------------------------------

    def _run_team(self, team: diffs.TeamSummary, chunk: str) -> TeamResult:
        cfg = self.config
        assert self.control is not None
        started = time.monotonic()
        state = _TeamState(TeamResult(team.team_id))
        log.info(
            "Team %d: reading the diff (%d persons with diffs, mode %s, batch_size %d)",
            team.team_id,
            team.persons_with_diff,
            team.mode,
            cfg.batch_size,
        )
        if not cfg.dry_run:
            ledger.start_team(self.control, cfg.job_id, team.team_id, chunk)
            state.watermark = self._outbox_watermark()
            state.resumed = self._job_touched_team(team.team_id)
        try:
            self._apply_team(team.team_id, state)
            if state.result.processed == 0:
                log.info("Team %d: nothing to reconcile", team.team_id)
            state.result.status = ledger.SUCCEEDED
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R11.2)
            self._fail_team(team.team_id, state, exc)
        state.result.duration_seconds = time.monotonic() - started
        r = state.result
        log.info(
            "Team %d %s: processed=%d updated=%d skipped=%d commits=%d (%.1fs)",
            team.team_id,
            r.status,
            r.processed,
            r.updated,
            r.skipped,
            r.commits,
            r.duration_seconds,
        )
        self._record_team(r)
        return r

    def _record_team(self, r: TeamResult) -> None:
        if self.config.dry_run:
            return
        assert self.control is not None
        ledger.finish_team(
            self.control,
            self.config.job_id,
            r.team_id,
            status=r.status,
            error=r.error,
            processed=r.processed,
            updated=r.updated,
            skipped=r.skipped,
            outcomes={**{o: r.outcomes.get(o, 0) for o in OUTCOMES}, "already_applied": r.already_applied},
            commits=r.commits,
            duration_seconds=r.duration_seconds,
        )

    def _confirm_deliveries(self, teams: list[TeamResult]) -> None:
        """Deliveries are confirmed asynchronously while later teams run; at the end every message must
        be confirmed. A team with unconfirmed messages fails (its rows wait in the outbox)."""
        if self.publisher is None:
            return
        assert self.control is not None
        for future in self._publishing:
            future.result()
        self._publishing.clear()
        failures = {**self._publish_errors, **self.publisher.confirm(self.control)}
        for team in teams:
            error = failures.get(team.team_id)
            if error is None:
                continue
            log.error("Team %d: %s", team.team_id, error)
            team.status = ledger.FAILED
            team.error = f"{team.error}; {error}" if team.error else error
            self._record_team(team)

    def _fail_team(self, team_id: int, state: _TeamState, exc: Exception) -> None:
        log.exception("Team %d failed: %s", team_id, exc)
        assert self.conn is not None and self.control is not None
        try:
            self.conn.rollback()
        except psycopg.Error:
            pass
        if self.conn.broken or self.conn.closed:
            self.conn.close()
            self.conn = persons.connect(self.pg_url, read_only=self.config.dry_run)
        # Staged persons of the rolled-back batch become team_failed; committed batches stay.
        state.result.outcomes[TEAM_FAILED] += state.staged_count
        state.discard_staged()
        self.sink.batch_failed()
        state.result.status = ledger.FAILED
        state.result.error = f"{type(exc).__name__}: {exc}"

    def _job_touched_team(self, team_id: int) -> bool:
        """Whether an earlier attempt of this job wrote persons of this team (else no lookups needed)."""
        assert self.control is not None
        row = self.control.execute(
            "SELECT EXISTS (SELECT 1 FROM recon_outbox WHERE job_id = %s AND team_id = %s)",
            (self.config.job_id, team_id),
        ).fetchone()
        return bool(row and row[0])

    def _outbox_watermark(self) -> int:
        assert self.control is not None
        row = self.control.execute("SELECT coalesce(max(id), 0) FROM recon_outbox").fetchone()
        return int(row[0]) if row else 0

    def _chunks(self, team_id: int) -> Iterator[list[PersonDiff]]:
        """Chunks of at most a page that never straddle a batch boundary."""
        cfg = self.config
        chunk: list[PersonDiff] = []
        in_batch = 0
        for diff in diffs.iter_team_diffs(self.ch, self.schema, team_id, cfg.page_size):
            chunk.append(diff)
            in_batch += 1
            batch_full = cfg.batch_size > 0 and in_batch == cfg.batch_size
            if batch_full or len(chunk) >= cfg.page_size:
                yield chunk
                chunk = []
                in_batch = 0 if batch_full else in_batch
        if chunk:
            yield chunk

    # --- batch ------------------------------------------------------------------------------------

    def _apply_team(self, team_id: int, state: _TeamState) -> None:
        """Chunk after chunk: lock and merge (this thread), then write and, at a batch's end, commit (the
        writer thread) while this thread reads and decodes the next chunk from ClickHouse."""
        cfg = self.config
        chunks = self._chunks(team_id)
        chunk = next(chunks, None)
        while chunk is not None:
            writes = self._process_chunk(team_id, chunk, state)
            closes = cfg.batch_size > 0 and state.in_batch >= cfg.batch_size
            if not writes and not closes:
                chunk = next(chunks, None)
                continue
            future = self._writer.submit(self._write, team_id, writes, state, closes)
            prefetch_error: Exception | None = None
            try:
                chunk = next(chunks, None)
            except Exception as exc:  # noqa: BLE001 - raised once the write is settled
                prefetch_error = exc
            committed = future.result()
            if closes:
                self._batch_closed(team_id, state, committed)
            if prefetch_error is not None:
                raise prefetch_error
        if state.in_batch:
            self._batch_closed(team_id, state, self._write(team_id, [], state, True))

    def _write(
        self, team_id: int, writes: list[persons.PersonWrite], state: _TeamState, closes: bool
    ) -> bool:
        """Write a chunk; at the end of a batch commit it if it wrote anything (R9.11), else release its
        row locks. Returns whether it committed. Runs on the writer thread (or inline)."""
        assert self.conn is not None
        if writes:
            persons.write_chunk(self.conn, self.config.job_id, team_id, writes, backup=self.config.backup)
        if not closes:
            return False
        if state.batch_writes and not self.config.dry_run:
            faults.point("before_commit")
            self.conn.commit()
            faults.point("after_commit")
            return True
        self.conn.rollback()
        return False

    def _batch_closed(self, team_id: int, state: _TeamState, committed: bool) -> None:
        """After a batch's commit: count it, hand its outbox rows to the publishing thread, and make its
        persons' results final."""
        state.batches += 1
        if committed:
            state.result.commits += 1
            log.info(
                "Team %d: committed batch %d (%d persons, %d updates)",
                team_id,
                state.batches,
                state.in_batch,
                state.batch_writes,
            )
            if self.publisher is not None:
                self._publishing = [f for f in self._publishing if not f.done()]
                self._publishing.append(self._publish_pool.submit(self._publish_batch, team_id, state))
        state.accept_staged()
        self.sink.batch_closed()

    def _publish_batch(self, team_id: int, state: _TeamState) -> None:
        """Produce a committed batch's outbox rows and mark what the broker confirmed so far (publishing
        thread; the team's state.watermark is only used here, in order)."""
        assert self.publisher is not None and self.control is not None
        try:
            produced, state.watermark = self.publisher.produce_pending(
                self.control, job_id=self.config.job_id, team_id=team_id, after_id=state.watermark
            )
            self.publisher.mark_published(self.control)
            log.debug("Team %d: %d messages sent to Kafka", team_id, produced)
            faults.point("after_batch")
        except Exception as exc:  # noqa: BLE001 - reported as the team's failure at the end of the run
            log.exception("Team %d: publishing failed", team_id)
            self._publish_errors.setdefault(team_id, f"publishing failed: {type(exc).__name__}: {exc}")

    # --- chunk ------------------------------------------------------------------------------------

    def _process_chunk(
        self, team_id: int, chunk: list[PersonDiff], state: _TeamState
    ) -> list[persons.PersonWrite]:
        """Lock the chunk's rows and decide every person (results staged); returns what to write."""
        cfg = self.config
        assert self.conn is not None
        chunk = [conflict_filter(d) for d in chunk]
        uuids = [d.person_uuid for d in chunk]
        if len(set(uuids)) != len(uuids):
            raise ValueError(f"team {team_id}: the diff table lists a person more than once in one page")
        applied = persons.applied_by_job(self.conn, cfg.job_id, team_id, uuids) if state.resumed else {}
        rows, missing, locked_out = self._lock(team_id, [u for u in uuids if u not in applied])
        three_way = [
            (d.person_uuid, d.baseline_version)
            for d in chunk
            if d.person_uuid in rows and (rows[d.person_uuid].version or 0) != d.baseline_version
        ]
        historic = diffs.historic_properties(self.ch, self.source_db, team_id, three_way)
        writes: list[persons.PersonWrite] = []
        for diff in chunk:
            uuid = diff.person_uuid
            if uuid in applied:
                result = _already_applied(diff, applied[uuid])
            elif uuid in missing:
                result = PersonResult(diff, NOT_FOUND)
            elif uuid in locked_out:
                result = PersonResult(diff, VERSION_CONFLICT)
            else:
                result, write = self._decide(diff, rows[uuid], historic.get(uuid))
                if write is not None:
                    writes.append(write)
            if result.outcome in (NOT_FOUND, VERSION_CONFLICT):
                log.warning("Person %s of team %d: %s", uuid, team_id, result.outcome)
            state.stage(result, counts_as_update=result.outcome == SUCCESS and not cfg.dry_run)
            self.sink.stage(result)
        state.batch_writes += len(writes)
        return writes

    def _lock(
        self, team_id: int, uuids: list[UUID]
    ) -> tuple[dict[UUID, persons.PgPerson], set[UUID], set[UUID]]:
        """Lock (dry run: read) the rows. Returns (rows, uuids without a row, uuids locked by others)."""
        assert self.conn is not None
        lock = not self.config.dry_run
        rows: dict[UUID, persons.PgPerson] = {}
        missing: set[UUID] = set()
        pending = uuids
        for attempt in range(LOCK_ATTEMPTS):
            rows.update(persons.lock_persons(self.conn, team_id, pending, lock=lock, with_metadata=False))
            pending = [u for u in pending if u not in rows]
            if not pending:
                break
            exists = persons.existing_uuids(self.conn, team_id, pending)
            missing.update(u for u in pending if u not in exists)
            pending = [u for u in pending if u in exists]
            if not pending or attempt == LOCK_ATTEMPTS - 1:
                break
            log.info("Team %d: %d persons locked by another transaction; retrying", team_id, len(pending))
            time.sleep(LOCK_RETRY_WAITS[attempt])
        return rows, missing, set(pending)

    def _decide(
        self, diff: PersonDiff, pg: persons.PgPerson, historic: dict[str, Any] | None
    ) -> tuple[PersonResult, persons.PersonWrite | None]:
        """R9.2 steps 2–5 for a locked row: pick the merge, compute the new state and what to write."""
        pg_version = pg.version or 0  # NULL counts as 0 and stays updatable (a deliberate difference)
        if pg_version == diff.baseline_version:
            merged = simple_merge(pg.properties, diff)
        elif historic is None:
            return PersonResult(diff, NOT_FOUND, pg.properties, None, pg.version, None), None
        else:
            merged = three_way_merge(historic, pg.properties, diff)
        if not merged.changed:
            return PersonResult(diff, NO_CHANGES, pg.properties, pg.properties, pg.version, pg.version), None
        version_after = pg_version + 1
        result = PersonResult(diff, SUCCESS, pg.properties, merged.properties, pg.version, version_after)
        if self.config.dry_run:
            return result, None
        properties_json = json.dumps(merged.properties)
        updated_at_json, operation_json = merged.metadata_json()
        write = persons.PersonWrite(
            person=pg,
            properties_json=properties_json,
            updated_at_set_json=updated_at_json,
            operation_set_json=operation_json,
            metadata_removed=merged.metadata_removed,
            version_after=version_after,
            pending_operations_json=pending_operations_json(diff) if self.config.backup else "[]",
            payload=kafka_message(
                pg.uuid, diff.team_id, properties_json, pg.is_identified, pg.created_at, version_after
            ),
        )
        return result, write


def _already_applied(diff: PersonDiff, applied: persons.AppliedByJob) -> PersonResult:
    """A person an earlier attempt of this job updated: reported as that update, never written again."""
    message = json.loads(applied.payload)
    return PersonResult(
        diff,
        SUCCESS,
        properties_after=json.loads(message["properties"]),
        version_after=applied.version,
        already_applied=True,
    )


class _TeamState:
    """Counters of one team; those of the open batch are staged until it closes."""

    def __init__(self, result: TeamResult):
        self.result = result
        self.in_batch = 0
        self.batch_writes = 0
        self.batches = 0
        self.watermark = 0
        self.resumed = False
        self._staged: Counter[str] = Counter()
        self._staged_updates = 0
        self._staged_already = 0

    @property
    def staged_count(self) -> int:
        return sum(self._staged.values())

    def stage(self, result: PersonResult, *, counts_as_update: bool) -> None:
        self.in_batch += 1
        self._staged[result.outcome] += 1
        self._staged_updates += counts_as_update
        self._staged_already += result.already_applied

    def accept_staged(self) -> None:
        self.result.outcomes.update(self._staged)
        self.result.updated += self._staged_updates
        self.result.already_applied += self._staged_already
        self.discard_staged()

    def discard_staged(self) -> None:
        self._staged.clear()
        self._staged_updates = 0
        self._staged_already = 0
        self.in_batch = 0
        self.batch_writes = 0
