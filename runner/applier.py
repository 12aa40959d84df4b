"""`runner apply`: the diff table applied to Postgres, then published to Kafka.

Per team, persons are read from the diff table in keyset pages and handled in chunks (at most a page,
cut at batch boundaries). A chunk costs a fixed number of statements whatever its size: one
`SELECT ... FOR UPDATE SKIP LOCKED`, one ClickHouse query for the historic state of the persons that
need the three-way merge, one COPY and one statement writing backups, updates and outbox rows
(`runner.persons`); on a re-run of a job, one lookup of the persons it already applied. Every
`batch_size` processed persons the batch is closed: committed if it wrote anything, else its row locks
are released (R9.11).

Postgres, ClickHouse, Kafka and this process work at once:
- a reader thread reads and decodes the diff, every team in turn, a couple of chunks ahead;
- this thread locks and merges a chunk. Batches (commit units) alternate between two connections, so
  while the writer thread writes and commits one batch, this thread already locks and merges the next
  on the other connection. The next batch's results are staged (and its writes sent) only once the one
  before it committed: commits and results stay in order, and a failed batch stops the team before the
  next one counts as processed;
- the publishing thread produces each committed batch's messages (kept in memory since they were
  written; read back from the outbox only past a bound) and marks fully confirmed outbox batches
  published, one row per written chunk.
Deliveries are confirmed asynchronously; at the end of the run every message must be confirmed, else
the teams owning the unconfirmed ones fail (their batches stay unpublished for the next run). Memory
holds a few chunks, whatever the team's size.

Outcomes (R7.4), as decided here:
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
exact: the merge runs on jsonb in the write statement (`runner.persons`), so keys the diff does not
touch are never decoded, set values are ClickHouse's texts, and the Kafka message is built from the
jsonb Postgres then holds. A lost Postgres connection fails the team being applied (its committed
batches count); the ledger connection is reopened to record it, the next team gets new connections.
"""

from __future__ import annotations

import gc
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import psycopg
from clickhouse_connect.driver.client import Client

from runner import diffs, faults, ledger, metrics, outbox, pacing, persons
from runner.engine_rules import (
    CHANGED_UNDER_WRITE,
    HELD,
    HELD_PAST_LOCK_TIMEOUT,
    INVALID_VALUE,
    KEPT_MESSAGES,
    LOCK_ATTEMPTS,
    LOCK_RETRY_WAITS,
    PERSON_FAILURES,
    RETRY_WAIT_BUDGET,
    TEAM_FAILED,
    VERSION_CONFLICT,
    finished_team_status,
)
from runner.merge import (
    PersonDiff,
    conflict_filter,
    json_loads,
    pending_operations_json,
    simple_merge,
    three_way_merge,
)
from runner.publisher import Publisher, PublishError, drain

log = logging.getLogger("runner.apply")

SUCCESS = "success"
NO_CHANGES = "no_changes"
NOT_FOUND = "not_found"
OUTCOMES = (SUCCESS, NO_CHANGES, NOT_FOUND, VERSION_CONFLICT, INVALID_VALUE, TEAM_FAILED)

REQUIRED_MIGRATION = 7  # 7: outbox quarantine (runner.outbox)

# Committed batches waiting for the publishing thread (each holds its messages) before apply waits.
PUBLISH_BACKLOG = 4


@dataclass(frozen=True)
class ApplyConfig:
    job_id: str
    dry_run: bool = False
    team_ids: tuple[int, ...] = ()
    batch_size: int = 100
    page_size: int = 10_000
    backup: bool = True
    publish_timeout: float = 30.0
    max_rate: float | None = None  # persons per second (runner.pacing); None = unlimited

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
    reason: str | None = None  # why the person failed (invalid_value, version_conflict)


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
    # Persons not applied (version_conflict, invalid_value): (uuid, outcome, reason), the first ones.
    failures: list[tuple[str, str, str]] = field(default_factory=list)

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
    quarantined: int = 0  # messages of this job Kafka rejected for good (runner.outbox): exit 1

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
        self.throttle = pacing.Throttle(config.max_rate, 0, f"job {config.job_id}")  # --max-rate, progress
        # Two transactions in flight: batch n on conns[n % 2] (see the module's docstring).
        self.conns: list[psycopg.Connection] = []
        self._turn = 0
        self._control = persons.Control(pg_url)
        self._reader: _DiffReader | None = None
        self._flight: _Flight | None = None  # the batch the writer thread writes and commits
        # One thread writes and commits a batch while this one prepares the next; one publishes.
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
        self.throttle.start(sum(t.persons_with_diff for t in teams))
        gc_thresholds = _quiet_gc()
        try:
            if not cfg.dry_run:
                assert self.publisher is not None
                invocations = sorted({t.invocation_id for t in teams})
                self._control.call(
                    ledger.start_run,
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
                try:
                    self.conns = [persons.connect(self.pg_url, read_only=cfg.dry_run) for _ in range(2)]
                    self._reader = _DiffReader(self._chunks, [t.team_id for t in teams])
                    for team in teams:
                        self._run_team(team, chunk, result.teams)
                    if self._flight is not None:
                        self._land(None)
                    self._confirm_deliveries(result.teams)
                    if not cfg.dry_run:
                        result.quarantined = self._control.call(outbox.job_quarantined, cfg.job_id)
                except psycopg.OperationalError as exc:
                    # Postgres stayed unreachable past the reconnection attempts: the run ends here,
                    # with what was committed counted (the teams that finished) and the rest failed.
                    result.error = f"lost the connection to Postgres: {str(exc).strip()}"
                    log.error("Stopping the run: %s", result.error)
                    done = {t.team_id for t in result.teams}
                    result.teams += [
                        TeamResult(t.team_id, status=ledger.FAILED, error=f"not finished: {result.error}")
                        for t in teams
                        if t.team_id not in done
                    ]
            else:
                result.teams = [
                    TeamResult(t.team_id, status=ledger.FAILED, error=f"not started: {result.error}")
                    for t in teams
                ]
            result.duration_seconds = time.monotonic() - started
            failed = [t.team_id for t in result.teams if t.status != ledger.SUCCEEDED]
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
                self._finish_ledger(result)
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
            if self._reader is not None:
                self._reader.close()
            self._writer.shutdown(wait=True)
            self._publish_pool.shutdown(wait=True)
            for conn in self.conns:
                conn.close()
            self._control.close()
            if self.publisher is not None:
                self.publisher.close()
            gc.unfreeze()
            gc.set_threshold(*gc_thresholds)

    @property
    def control(self) -> psycopg.Connection:
        """The ledger's autocommit connection (reopened when it was lost)."""
        return self._control.get()

    def _finish_ledger(self, result: RunResult) -> None:
        """Close the run in the ledger; after a lost connection also the teams it could not record
        (their true counts), on a fresh connection. Best effort: Postgres may still be away."""
        try:
            if result.error is not None:
                for team in result.teams:
                    self._record_team(team)
            status = ledger.FAILED if result.failed else ledger.SUCCEEDED
            self._control.call(ledger.finish_run, self.config.job_id, status)
        except psycopg.OperationalError as exc:
            log.error("Could not record the end of job %s in the ledger: %s", self.config.job_id, exc)

    def _ensure_conns(self) -> None:
        """Reopen apply connections a failed team left lost (bounded backoff; raises when Postgres stays
        away, which ends the run)."""
        for i, conn in enumerate(self.conns):
            in_flight = self._flight is not None and self._flight.conn is conn
            if (conn.closed or conn.broken) and not in_flight:
                conn.close()
                log.warning("Reconnecting to Postgres (a connection was lost)")
                self.conns[i] = persons.connect(self.pg_url, read_only=self.config.dry_run)

    # --- team -------------------------------------------------------------------------------------

    def _run_team(self, team: diffs.TeamSummary, chunk: str, finished: list[TeamResult]) -> None:
        """Apply one team. Its last batch may still be committing when this returns: the team is
        finished (ledger, sink, `finished`) once that batch landed, while the next team starts."""
        cfg = self.config
        assert self._reader is not None
        self._ensure_conns()
        state = _TeamState(TeamResult(team.team_id), finished)
        log.info(
            "Team %d: reading the diff (%d persons with diffs, mode %s, batch_size %d)",
            team.team_id,
            team.persons_with_diff,
            team.mode,
            cfg.batch_size,
        )
        try:
            if not cfg.dry_run:
                self._control.call(ledger.start_team, cfg.job_id, team.team_id, chunk)
                state.resumed = self._job_touched_team(team.team_id)
            self._apply_team(team.team_id, state)
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R11.2)
            if self._flight is not None:
                self._land(state, quiet=True)
            self._fail_team(state, exc, self.conns)
        finally:
            self._reader.finish_team(team.team_id)
        state.applied = True
        if self._flight is None or self._flight.state is not state:
            self._finish_team(state)

    def _finish_team(self, state: _TeamState) -> None:
        r = state.result
        r.failures = [
            (str(f.diff.person_uuid), f.outcome, f.reason or "")
            for f in state.failures[: ledger.FAILURES_KEPT]
            if f.outcome in PERSON_FAILURES
        ]
        if r.status == ledger.RUNNING:
            r.status, r.error = finished_team_status(r.outcomes)
            if r.error:
                log.warning("Team %d %s", r.team_id, r.error)
            if r.processed == 0:
                log.info("Team %d: nothing to reconcile", r.team_id)
        r.duration_seconds = time.monotonic() - state.started
        log.info(
            "Team %d %s: processed=%d updated=%d skipped=%d commits=%d (%.1fs)",
            r.team_id,
            r.status,
            r.processed,
            r.updated,
            r.skipped,
            r.commits,
            r.duration_seconds,
        )
        state.finished.append(r)
        self.sink.team_finished(r)
        self._record_team(r)

    def _record_team(self, r: TeamResult) -> None:
        if self.config.dry_run:
            return
        self._control.call(
            ledger.finish_team,
            self.config.job_id,
            r.team_id,
            status=r.status,
            error=r.error,
            processed=r.processed,
            updated=r.updated,
            skipped=r.skipped,
            outcomes={
                **{o: r.outcomes.get(o, 0) for o in OUTCOMES},
                "already_applied": r.already_applied,
                "failures": [
                    {"person_uuid": u, "outcome": o, "reason": reason} for u, o, reason in r.failures
                ],
            },
            commits=r.commits,
            duration_seconds=r.duration_seconds,
        )

    def _confirm_deliveries(self, teams: list[TeamResult]) -> None:
        """Deliveries are confirmed asynchronously while later teams run; at the end every message must
        be confirmed. A team with unconfirmed messages fails (its rows wait in the outbox)."""
        if self.publisher is None:
            return
        for future in self._publishing:
            future.result()
        self._publishing.clear()
        failures = {**self._publish_errors, **self._control.call(self.publisher.confirm)}
        for team in teams:
            error = failures.get(team.team_id)
            if error is None:
                continue
            log.error("Team %d: %s", team.team_id, error)
            team.status = ledger.FAILED
            team.error = f"{team.error}; {error}" if team.error else error
            self._record_team(team)

    def _fail_team(self, state: _TeamState, exc: Exception, conns: Sequence[psycopg.Connection]) -> None:
        """The team's open batch (on `conns`) is rolled back; its staged persons become team_failed,
        committed batches stay."""
        log.exception("Team %d failed: %s", state.result.team_id, exc)
        for conn in conns:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            if conn.broken or conn.closed:
                conn.close()  # reopened when the next team starts (_ensure_conns)
        for held in state.retry:  # never written: their lines come out as team_failed too
            self.sink.stage(held)
        state.result.outcomes[TEAM_FAILED] += state.staged_count + len(state.retry)
        state.retry = []
        state.discard_staged()
        self.sink.batch_failed()
        state.result.status = ledger.FAILED
        state.result.error = f"{type(exc).__name__}: {exc}"

    def _job_touched_team(self, team_id: int) -> bool:
        """Whether an earlier attempt of this job wrote persons of this team (else no lookups needed)."""
        row = self._control.call(
            lambda conn: conn.execute(
                "SELECT EXISTS (SELECT 1 FROM recon_outbox WHERE job_id = %s AND team_id = %s)",
                (self.config.job_id, team_id),
            ).fetchone()
        )
        return bool(row and row[0])

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
        """Chunk after chunk: lock and merge on the open batch's connection; a batch's last chunk is
        written and committed by the writer thread (the flight) while the next batch, of this team or
        the next, starts on the other connection. The next batch's results count (are staged) only once
        the flight landed. Returns with this team's last batch possibly still in flight."""
        cfg = self.config
        assert self._reader is not None
        for chunk in self._reader.team_chunks(team_id):
            conn = self.conns[self._turn]
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self.throttle.before_batch()  # --max-rate waits only while this batch holds no row lock
            self.throttle.count(len(chunk))
            results, writes = self._process_chunk(conn, team_id, chunk, state)
            if self._flight is not None:
                self._land(state)
            state.batch_writes += len(writes)
            keep = state.kept_messages + len(writes) <= KEPT_MESSAGES
            if cfg.batch_size > 0 and state.in_batch + len(results) >= cfg.batch_size:
                # The chunk's results are staged once its write landed (they may change: see _amend).
                commit = bool(state.batch_writes) and not cfg.dry_run
                future = self._writer.submit(self._write, conn, team_id, writes, True, commit, keep)
                self._flight = _Flight(state, conn, future, state.take_outbox(), results)
                self._turn ^= 1
                continue
            written = None
            if writes:
                try:
                    _, written = self._write(conn, team_id, writes, False, False, keep)
                except Exception:
                    self._stage(state, results)  # they count as team_failed
                    raise
                assert written is not None
                for batch in written.outbox:
                    state.add_outbox(batch)
            self._settle(state, results, written)
        if self._flight is not None and self._flight.state is not state:
            self._land(state)  # an earlier team's last batch: that team finishes first
        # While this team's last batch is in flight the staged counts are that batch's; else they are
        # those of a partial batch still open here.
        if self._flight is None and state.in_batch:
            conn = self.conns[self._turn]
            self._turn ^= 1
            commit = bool(state.batch_writes) and not cfg.dry_run
            committed, _ = self._write(conn, team_id, [], True, commit, False)
            self._batch_closed(state, committed, state.take_outbox())
        if self._flight is None:
            self._retry_conflicts(state, self.conns[self._turn])

    def _land(self, current: _TeamState | None, *, quiet: bool = False) -> None:
        """Wait for the flight's write and commit, then close its batch (and finish its team if that team
        is done). A failed flight of `current`'s team raises (unless `quiet`: the caller is failing the
        team anyway); a failed flight of an earlier team fails that team only."""
        flight = self._flight
        assert flight is not None
        self._flight = None
        try:
            committed, written = flight.future.result()
        except Exception as exc:  # noqa: BLE001 - the flight's team fails (below or in the caller)
            self._stage(flight.state, flight.results)  # they count as team_failed
            if flight.state is current:
                if quiet:
                    return
                raise
            self._fail_team(flight.state, exc, [flight.conn])
        else:
            self._settle(flight.state, flight.results, written)
            outbox = flight.outbox if written is None else [*flight.outbox, *written.outbox]
            self._batch_closed(flight.state, committed, outbox)
        if flight.state is not current and flight.state.applied:
            # The flight was that team's last batch: its retries run on the connection it freed.
            if flight.state.result.status == ledger.RUNNING:
                self._retry_guarded(flight.state, flight.conn)
            self._finish_team(flight.state)

    def _write(
        self,
        conn: psycopg.Connection,
        team_id: int,
        writes: list[persons.PersonWrite],
        closes: bool,
        commit: bool,
        keep_messages: bool,
    ) -> tuple[bool, persons.ChunkWritten | None]:
        """Write a chunk; at the end of a batch commit it if the batch wrote anything (R9.11, `commit`),
        else release its row locks. Returns whether it committed, and what the chunk's write did. Runs
        on the writer thread (or inline)."""
        written = None
        if writes:
            written = persons.write_chunk(
                conn,
                self.config.job_id,
                team_id,
                writes,
                backup=self.config.backup,
                keep_messages=keep_messages,
            )
        if not closes:
            return False, written
        if commit:
            faults.point("before_commit")
            conn.commit()
            faults.point("after_commit")
            return True, written
        conn.rollback()
        return False, written

    def _stage(self, state: _TeamState, results: list[PersonResult]) -> None:
        for result in results:
            state.stage(result, counts_as_update=result.outcome == SUCCESS and not self.config.dry_run)
            self.sink.stage(result)

    def _settle(
        self,
        state: _TeamState,
        results: list[PersonResult],
        written: persons.ChunkWritten | None,
        *,
        final: bool = False,
    ) -> None:
        """Stage results as the write turned them out: a person whose row had changed since it was read
        was not written (version_conflict), one whose value Postgres refused fails alone
        (invalid_value). Version conflicts are held back for the end-of-team retry unless `final`."""
        if written is not None and (written.lost or written.invalid):
            lost = set(written.lost)
            for r in results:
                uuid = r.diff.person_uuid
                if uuid in lost:
                    log.warning(
                        "Person %s of team %d: its row changed since it was read", uuid, r.diff.team_id
                    )
                    r.outcome, r.reason = VERSION_CONFLICT, CHANGED_UNDER_WRITE
                    r.properties_after = r.version_after = None
                elif uuid in written.invalid:
                    r.outcome, r.reason = INVALID_VALUE, written.invalid[uuid]
                    r.properties_after = r.version_after = None
                    log.warning("Person %s of team %d: %s", uuid, r.diff.team_id, r.reason)
        for r in results:
            if r.outcome == VERSION_CONFLICT and not final:
                state.hold(r)
                continue
            if r.outcome in PERSON_FAILURES:
                state.failures.append(r)
            state.stage(r, counts_as_update=r.outcome == SUCCESS and not self.config.dry_run)
            self.sink.stage(r)

    def _retry_guarded(self, state: _TeamState, conn: psycopg.Connection) -> None:
        """The end-of-team retry inside the team's error boundary."""
        try:
            self._retry_conflicts(state, conn)
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R11.2)
            self._fail_team(state, exc, [conn])

    def _retry_conflicts(self, state: _TeamState, conn: psycopg.Connection) -> None:
        """Fault 5/7/8 of issue 11: persons whose row was held by another transaction, or changed under
        the write, are tried once more at the end of their team, in a batch of their own: each row lock
        is waited for (bounded by lock_timeout, as the original did), the row re-read, the diff merged
        against it (three-way when it moved on) and written. Those still conflicted stay
        version_conflict, and the team ends incomplete."""
        pending, state.retry = state.retry, []
        if not pending:
            return
        team_id = state.result.team_id
        log.info("Team %d: retrying %d persons, waiting for their rows", team_id, len(pending))
        deadline = time.monotonic() + RETRY_WAIT_BUDGET
        rows: dict[UUID, persons.PgPerson] = {}
        held: set[UUID] = set()
        for r in pending:
            uuid = r.diff.person_uuid
            row = persons.lock_waiting(conn, team_id, uuid, wait=time.monotonic() < deadline)
            if row == persons.HELD:
                held.add(uuid)
            elif isinstance(row, persons.PgPerson):
                rows[uuid] = row
        three_way = [
            (r.diff.person_uuid, r.diff.baseline_version)
            for r in pending
            if r.diff.person_uuid in rows
            and (rows[r.diff.person_uuid].version or 0) != r.diff.baseline_version
        ]
        historic = diffs.historic_properties(self.ch, self.source_db, team_id, three_way)
        results: list[PersonResult] = []
        writes: list[persons.PersonWrite] = []
        for r in pending:
            uuid = r.diff.person_uuid
            if uuid in held:
                reason = HELD_PAST_LOCK_TIMEOUT
                results.append(PersonResult(r.diff, VERSION_CONFLICT, reason=reason))
                log.warning("Person %s of team %d: %s", uuid, team_id, reason)
            elif uuid not in rows:
                results.append(PersonResult(r.diff, NOT_FOUND))
            else:
                result, write = self._decide(r.diff, rows[uuid], historic.get(uuid))
                results.append(result)
                if write is not None:
                    writes.append(write)
        committed, written = self._write(conn, team_id, writes, True, bool(writes), True)
        self._settle(state, results, written, final=True)
        self._batch_closed(state, committed, [] if written is None else written.outbox)

    def _batch_closed(self, state: _TeamState, committed: bool, outbox: list[persons.OutboxBatch]) -> None:
        """After a batch's commit: count it, hand its outbox batches to the publishing thread, and make
        its persons' results final."""
        team_id = state.result.team_id
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
            if self.publisher is not None and outbox:
                self._publishing = [f for f in self._publishing if not f.done()]
                while len(self._publishing) >= PUBLISH_BACKLOG:  # Kafka is behind: wait for it
                    self._publishing.pop(0).result()
                self._publishing.append(self._publish_pool.submit(self._publish_batch, team_id, outbox))
        state.accept_staged()
        self.sink.batch_closed()

    def _publish_batch(self, team_id: int, outbox: list[persons.OutboxBatch]) -> None:
        """Produce a committed batch's messages and mark the outbox batches confirmed so far published
        (publishing thread)."""
        assert self.publisher is not None
        try:
            produced = sum(self._control.call(self.publisher.produce_batch, batch) for batch in outbox)
            self._control.call(self.publisher.mark_published)
            log.debug("Team %d: %d messages sent to Kafka", team_id, produced)
            faults.point("after_batch")
        except Exception as exc:  # noqa: BLE001 - reported as the team's failure at the end of the run
            log.exception("Team %d: publishing failed", team_id)
            self._publish_errors.setdefault(team_id, f"publishing failed: {type(exc).__name__}: {exc}")

    # --- chunk ------------------------------------------------------------------------------------

    def _process_chunk(
        self, conn: psycopg.Connection, team_id: int, chunk: list[PersonDiff], state: _TeamState
    ) -> tuple[list[PersonResult], list[persons.PersonWrite]]:
        """Lock the chunk's rows and decide every person; returns the results and what to write."""
        cfg = self.config
        chunk = [conflict_filter(d) for d in chunk]
        uuids = [d.person_uuid for d in chunk]
        if len(set(uuids)) != len(uuids):
            raise ValueError(f"team {team_id}: the diff table lists a person more than once in one page")
        applied = persons.applied_by_job(conn, cfg.job_id, team_id, uuids) if state.resumed else {}
        faults.point("before_lock")
        lockable = [d.person_uuid for d in chunk if d.person_uuid not in applied and d.invalid is None]
        rows, missing, locked_out = self._lock(conn, team_id, lockable)
        three_way = [
            (d.person_uuid, d.baseline_version)
            for d in chunk
            if d.person_uuid in rows and (rows[d.person_uuid].version or 0) != d.baseline_version
        ]
        historic = diffs.historic_properties(self.ch, self.source_db, team_id, three_way)
        results: list[PersonResult] = []
        writes: list[persons.PersonWrite] = []
        for diff in chunk:
            uuid = diff.person_uuid
            if diff.invalid is not None:
                result = PersonResult(diff, INVALID_VALUE, reason=diff.invalid)
                log.warning("Person %s of team %d: %s", uuid, team_id, diff.invalid)
            elif uuid in applied:
                result = _already_applied(diff, applied[uuid])
            elif uuid in missing:
                result = PersonResult(diff, NOT_FOUND)
            elif uuid in locked_out:
                result = PersonResult(diff, VERSION_CONFLICT, reason=HELD)
            else:
                result, write = self._decide(diff, rows[uuid], historic.get(uuid))
                if write is not None:
                    writes.append(write)
            if result.outcome in (NOT_FOUND, VERSION_CONFLICT):
                log.warning("Person %s of team %d: %s", uuid, team_id, result.outcome)
            results.append(result)
        return results, writes

    def _lock(
        self, conn: psycopg.Connection, team_id: int, uuids: list[UUID]
    ) -> tuple[dict[UUID, persons.PgPerson], set[UUID], set[UUID]]:
        """Lock (dry run: read) the rows. Returns (rows, uuids without a row, uuids locked by others)."""
        lock = not self.config.dry_run
        rows: dict[UUID, persons.PgPerson] = {}
        missing: set[UUID] = set()
        pending = uuids
        for attempt in range(LOCK_ATTEMPTS):
            rows.update(persons.lock_persons(conn, team_id, pending, lock=lock, with_metadata=False))
            pending = [u for u in pending if u not in rows]
            if not pending:
                break
            exists = persons.existing_uuids(conn, team_id, pending)
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
        # Never below what ClickHouse holds: when Postgres is behind (gotcha 19) a `pg_version + 1`
        # message would be dropped by ClickHouse's ReplacingMergeTree(version) and the stores would
        # diverge for good; jumping past the baseline makes the repair land in both.
        version_after = max(pg_version, diff.baseline_version) + 1
        result = PersonResult(diff, SUCCESS, pg.properties, merged.properties, pg.version, version_after)
        if self.config.dry_run:
            return result, None
        updated_at_json, operation_json = merged.metadata_json()
        set_json, set_once_json = diff.value_maps()
        set_dropped, set_once_dropped = merged.dropped(diff)
        write = persons.PersonWrite(
            person=pg,
            version_after=version_after,
            pending_operations_json=pending_operations_json(diff) if self.config.backup else "[]",
            set_json=set_json,
            set_dropped=set_dropped,
            set_once_json=set_once_json,
            set_once_dropped=set_once_dropped,
            updated_at_set_json=updated_at_json,
            operation_set_json=operation_json,
            metadata_removed=merged.metadata_removed,
        )
        return result, write


@dataclass
class _Flight:
    """A batch whose last chunk the writer thread is writing and committing."""

    state: _TeamState
    conn: psycopg.Connection
    future: Future[tuple[bool, persons.ChunkWritten | None]]
    outbox: list[persons.OutboxBatch]  # of the batch's earlier chunks
    results: list[PersonResult]  # of the chunk being written, staged when it landed


_END = object()


class _DiffReader:
    """Reads and decodes the diff chunks of every team, in order, on a thread of its own, a couple of
    chunks ahead of the consumer (bounded: memory stays flat). Each team's chunks end with one terminal
    item: the end, or the error that stopped its reading (raised in the consumer)."""

    def __init__(self, chunks: Callable[[int], Iterator[list[PersonDiff]]], team_ids: Sequence[int]):
        self._chunks = chunks
        self._team_ids = list(team_ids)
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._cancelled: int | None = None
        self._finished: set[int] = set()  # teams whose terminal item the consumer took
        self._thread = threading.Thread(target=self._run, name="recon-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for team_id in self._team_ids:
            try:
                for chunk in self._chunks(team_id):
                    if self._cancelled == team_id:
                        break
                    if not self._put((team_id, chunk)):
                        return
                item: Any = _END
            except BaseException as exc:  # noqa: BLE001 - raised in the consumer, as the team's error
                item = exc
            if not self._put((team_id, item)):
                return

    def _put(self, item: tuple[int, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _take(self, team_id: int) -> Any:
        owner, item = self._queue.get()
        if owner != team_id:
            raise RuntimeError(f"diff reader out of step: chunk of team {owner} while applying {team_id}")
        if item is _END or isinstance(item, BaseException):
            self._finished.add(team_id)
        return item

    def team_chunks(self, team_id: int) -> Iterator[list[PersonDiff]]:
        while team_id not in self._finished:
            item = self._take(team_id)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def finish_team(self, team_id: int) -> None:
        """Skip what is left of a team's chunks (its application stopped early, or never started)."""
        self._cancelled = team_id
        while team_id not in self._finished:
            self._take(team_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _quiet_gc() -> tuple[int, int, int]:
    """Keep the cyclic garbage collector from rescanning the whole heap while persons stream through.

    Every person allocates a few dozen containers (decoded JSON, rows, results), all freed by reference
    counting, yet their count triggers collections that rescan every long-lived object (the engine's,
    the imported modules'): about a third of the CPU per person. The objects alive at the start are
    frozen out of the scans and collections run less often; memory stays flat since nothing of the
    per-person data forms cycles. Returns the thresholds to restore."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return thresholds


def _already_applied(diff: PersonDiff, applied: persons.AppliedByJob) -> PersonResult:
    """A person an earlier attempt of this job updated: reported as that update, never written again."""
    message = json.loads(applied.payload)
    return PersonResult(
        diff,
        SUCCESS,
        properties_after=json_loads(message["properties"]),
        version_after=applied.version,
        already_applied=True,
    )


class _TeamState:
    """Counters of one team; those of the open batch are staged until it closes."""

    def __init__(self, result: TeamResult, finished: list[TeamResult]):
        self.result = result
        self.finished = finished  # where the result goes once the team is done
        self.started = time.monotonic()
        self.applied = False  # all its chunks handled (its last batch may still be in flight)
        self.in_batch = 0
        self.batch_writes = 0
        self.batches = 0
        self.resumed = False
        self.failures: list[PersonResult] = []  # persons not applied: version_conflict, invalid_value
        self.retry: list[PersonResult] = []  # version conflicts held back for the end-of-team retry
        self.outbox: list[persons.OutboxBatch] = []  # of the open batch
        self.kept_messages = 0
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

    def hold(self, result: PersonResult) -> None:
        """A person of the open batch held back for the end-of-team retry: it fills the batch (batches
        keep their size) but counts, and is reported, once retried."""
        self.in_batch += 1
        self.retry.append(result)

    def add_outbox(self, batch: persons.OutboxBatch) -> None:
        self.outbox.append(batch)
        if batch.messages is not None:
            self.kept_messages += len(batch.messages)

    def take_outbox(self) -> list[persons.OutboxBatch]:
        """The open batch's outbox batches (the list fills until its write is done)."""
        outbox, self.outbox = self.outbox, []
        self.kept_messages = 0
        return outbox

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
