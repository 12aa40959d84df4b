"""The batch engine `runner apply` and `runner restore` both run on (issue 11): the loop, written once.

A job (`runner.jobs.apply.ApplyJob`, `runner.jobs.restore.RestoreJob`) supplies only what differs: the teams,
the chunk source per team (diff table pages, backup pages), what to read for a chunk's locked rows
before deciding (apply: ClickHouse's historic state for three-way merges; restore: the rows' metadata
maps), the decision per person (pure functions: `runner.rules.apply`, `runner.rules.restore`), how a
person an earlier attempt of the job already wrote is reported, and its ledger view and metrics. The
engine does the rest, the same way for both:

- the ledger (`runner.stores.ledger`: run, teams with their counts by outcome, on an autocommit connection
  that is reopened when lost) and, before new work, the backlog: unpublished messages of earlier runs;
- per team: whether an earlier attempt of the job touched it (then a chunk's persons the job already
  wrote are looked up in the outbox and reported, never written twice); per chunk: the rows locked
  with `SKIP LOCKED` in LOCK_ATTEMPTS quick attempts (`runner.rules.engine`), the job's prefetch and
  decision, the write (`runner.stores.persons.write_chunk`: backups, updates and outbox rows, a fixed number
  of statements); every `batch_size` processed persons the batch is closed: committed if it wrote
  anything, else its row locks released (R9.11);
- pipelining: a reader thread reads the chunks a couple ahead; batches (commit units) alternate
  between two connections, so while the writer thread writes and commits one batch, this thread
  already locks and decides the next on the other connection. The next batch's results are staged
  (and its writes sent) only once the one before it committed: commits and results stay in order, and
  a failed batch stops the team before the next one counts as processed;
- publishing: a publishing thread produces each committed batch's messages (kept in memory since they
  were written; read back from the outbox only past KEPT_MESSAGES) and marks fully confirmed outbox
  batches published. A committed batch counts even when its publishing fails afterwards. Deliveries
  are confirmed asynchronously; at the end of the run every message must be confirmed, else the teams
  owning the unconfirmed ones fail (their batches stay unpublished for the next run), and messages of
  the job Kafka rejected for good are counted (`runner.stores.outbox` quarantine);
- the end-of-team retry: persons whose row another transaction held on every quick attempt, or whose
  row changed between its lock and the write, are tried once more at the end of their team, in a batch
  of their own, waiting for each row lock (bounded); those still conflicted stay `version_conflict`;
- the team's error boundary (R11.2): a failing team's open batch is rolled back (its persons become
  `team_failed`), its committed batches count, and the run goes on with the next team; a lost Postgres
  connection fails the team being worked on, the next team gets new connections, and when Postgres
  stays away the run stops with the teams it did not finish failed;
- the team's status (`runner.rules.engine.finished_team_status`) and counters.

Fault points (`runner.config.faults`): `before_lock` (a chunk's rows are about to be locked), `before_commit`,
`after_commit` (writer thread), `mid_publish` (`runner.stores.publisher`), `after_batch` (publishing thread,
a batch published and marked).
"""

from __future__ import annotations

import gc
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

from runner.config import faults
from runner.engine import pacing
from runner.rules.engine import (
    CHANGED_UNDER_WRITE,
    HELD,
    HELD_PAST_LOCK_TIMEOUT,
    INVALID_VALUE,
    KEPT_MESSAGES,
    LOCK_ATTEMPTS,
    LOCK_RETRY_WAITS,
    NOT_FOUND,
    PERSON_FAILURES,
    RETRY_WAIT_BUDGET,
    TEAM_FAILED,
    VERSION_CONFLICT,
    finished_team_status,
)
from runner.stores import ledger, metrics, outbox, persons
from runner.stores.publisher import Publisher, PublishError, drain

log = logging.getLogger("runner.engine.batch")

# Committed batches waiting for the publishing thread (each holds its messages) before the engine waits.
PUBLISH_BACKLOG = 4


class PersonOutcome(Protocol):
    """A person's result as the engine handles it (apply's PersonResult, restore's PersonRestore)."""

    outcome: str
    reason: str | None
    properties_after: dict[str, Any] | None
    version_after: int | None

    @property
    def person_uuid(self) -> UUID: ...

    @property
    def already_done(self) -> bool: ...


class TeamCounts(Protocol):
    """A team's result as the engine counts it (apply's TeamResult, restore's TeamRestore)."""

    team_id: int
    status: str
    error: str | None
    outcomes: Counter[str]
    updated: int
    commits: int
    already_done: int
    duration_seconds: float
    failures: list[tuple[str, str, str]]

    @property
    def processed(self) -> int: ...

    @property
    def skipped(self) -> int: ...


class EngineSink(Protocol):
    """Where results go. Person results are staged while their batch is open and become final when it
    closes (`batch_closed`), or turn into `team_failed` when the team fails (`batch_failed`)."""

    def stage(self, result: Any) -> None: ...
    def batch_closed(self) -> None: ...
    def batch_failed(self) -> None: ...
    def team_finished(self, team: Any) -> None: ...


class Job(Protocol):
    """What apply and restore supply to the engine. Items are the job's persons to handle (apply: a
    PersonDiff, restore: a BackupEntry)."""

    ledger_job_id: str  # the id the job's ledger rows, backups and outbox rows carry
    ledger_kind: str
    label: str  # in progress lines and the rate limiter's messages
    dry_run: bool
    batch_size: int
    backup: bool
    max_rate: float | None
    updated_outcome: str  # the outcome that counts as an update (once written)
    updated_label: str  # what the logs call those updates ("updated", "restored")
    nothing_to: str  # what the logs say a team without persons had nothing to do ("reconcile", "restore")
    outcomes: tuple[str, ...]  # the ledger's counts by outcome
    already_key: str  # the ledger's count of persons an earlier attempt wrote
    log: logging.Logger

    def ledger_view(self) -> dict[str, Any]: ...
    def ledger_chunk(self, team_id: int) -> str: ...
    def team_intro(self, team_id: int) -> str: ...
    def new_team(self, team_id: int, status: str = ledger.RUNNING, error: str | None = None) -> Any: ...
    def connect(self) -> psycopg.Connection: ...
    def chunks(self, team_id: int) -> Iterator[list[Any]]: ...
    def uuid_of(self, item: Any) -> UUID: ...
    def item_of(self, result: Any) -> Any: ...
    def describe(self, item: Any) -> str: ...
    def screen(self, team_id: int, chunk: list[Any]) -> tuple[list[Any], dict[UUID, Any]]: ...
    def prefetch(
        self, conn: psycopg.Connection, team_id: int, items: list[Any], rows: dict[UUID, persons.PgPerson]
    ) -> Any: ...
    def decide(
        self, item: Any, pg: persons.PgPerson, prefetched: Any
    ) -> tuple[Any, persons.PersonWrite | None]: ...
    def already_done(self, item: Any, earlier: persons.AppliedByJob) -> Any: ...
    def unsettled(self, item: Any, outcome: str, reason: str | None = None) -> Any: ...
    def run_metrics(self, run: EngineRun) -> list[metrics.Counter]: ...


@dataclass
class EngineRun:
    teams: list[Any] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0
    published_backlog: int = 0
    metrics: list[metrics.Counter] = field(default_factory=list)
    quarantined: int = 0

    @property
    def failed(self) -> bool:
        return self.error is not None or any(t.status != ledger.SUCCEEDED for t in self.teams)


def cut_at_batches(items: Iterator[Any], batch_size: int, page_size: int) -> Iterator[list[Any]]:
    """Chunks of at most `page_size` items that never straddle a batch boundary (every `batch_size`
    items; 0: no boundary), from a stream of items."""
    chunk: list[Any] = []
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


class Engine:
    def __init__(
        self,
        job: Job,
        *,
        pg_url: str,
        publisher: Publisher | None,
        sink: EngineSink,
        application_name: str = persons.APPLICATION_NAME,
    ):
        if job.batch_size < 0:
            raise ValueError("batch_size must be >= 0")
        self.job = job
        self.log = job.log
        self.publisher = publisher
        self.sink = sink
        self.throttle = pacing.Throttle(job.max_rate, 0, job.label)  # --max-rate, progress
        # Two transactions in flight: batch n on conns[n % 2] (see the module's docstring).
        self.conns: list[psycopg.Connection] = []
        self._turn = 0
        self._control = persons.Control(pg_url, application_name)
        self._reader: _Reader | None = None
        self._flight: _Flight | None = None  # the batch the writer thread writes and commits
        # One thread writes and commits a batch while this one prepares the next; one publishes.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-writer")
        self._publish_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recon-publisher")
        self._publishing: list[Future[None]] = []
        self._publish_errors: dict[int, str] = {}

    @property
    def control(self) -> psycopg.Connection:
        """The ledger's autocommit connection (reopened when it was lost)."""
        return self._control.get()

    # --- run --------------------------------------------------------------------------------------

    def run(self, team_ids: Sequence[int], persons_total: int) -> EngineRun:
        """Run every given team; `persons_total` paces the progress. The job's metrics are computed
        (and written) before the ledger records the end of the run."""
        job = self.job
        started = time.monotonic()
        run = EngineRun()
        self.throttle.start(persons_total)
        gc_thresholds = _quiet_gc()
        try:
            if not job.dry_run:
                assert self.publisher is not None
                self._control.call(ledger.start_run, job.ledger_job_id, job.ledger_kind, job.ledger_view())
                try:
                    run.published_backlog = drain(self.control, self.publisher)
                except PublishError as exc:
                    run.error = f"unpublished messages of earlier runs could not be published: {exc}"
                    self.log.error("Not starting new work: %s", run.error)
            if run.error is None:
                try:
                    self.conns = [job.connect() for _ in range(2)]
                    self._reader = _Reader(job.chunks, team_ids)
                    for team_id in team_ids:
                        self._run_team(team_id, run.teams)
                    if self._flight is not None:
                        self._land(None)
                    self._confirm_deliveries(run.teams)
                    if not job.dry_run:
                        run.quarantined = self._control.call(outbox.job_quarantined, job.ledger_job_id)
                except psycopg.OperationalError as exc:
                    # Postgres stayed unreachable past the reconnection attempts: the run ends here,
                    # with what was committed counted (the teams that finished) and the rest failed.
                    run.error = f"lost the connection to Postgres: {str(exc).strip()}"
                    self.log.error("Stopping the run: %s", run.error)
                    done = {t.team_id for t in run.teams}
                    run.teams += [
                        job.new_team(t, ledger.FAILED, f"not finished: {run.error}")
                        for t in team_ids
                        if t not in done
                    ]
            else:
                run.teams = [job.new_team(t, ledger.FAILED, f"not started: {run.error}") for t in team_ids]
            run.duration_seconds = time.monotonic() - started
            run.metrics = job.run_metrics(run)
            if not job.dry_run:
                self._finish_ledger(run)
            return run
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

    def close(self) -> None:
        """Release what `run` would have (a job that stops before running)."""
        self._writer.shutdown(wait=True)
        self._publish_pool.shutdown(wait=True)
        self._control.close()
        if self.publisher is not None:
            self.publisher.close()

    def _finish_ledger(self, run: EngineRun) -> None:
        """Close the run in the ledger; after a lost connection also the teams it could not record
        (their true counts), on a fresh connection. Best effort: Postgres may still be away."""
        try:
            if run.error is not None:
                for team in run.teams:
                    self._record_team(team)
            status = ledger.FAILED if run.failed else ledger.SUCCEEDED
            self._control.call(ledger.finish_run, self.job.ledger_job_id, status)
        except psycopg.OperationalError as exc:
            self.log.error(
                "Could not record the end of job %s in the ledger: %s", self.job.ledger_job_id, exc
            )

    def _ensure_conns(self) -> None:
        """Reopen connections a failed team left lost (bounded backoff; raises when Postgres stays
        away, which ends the run)."""
        for i, conn in enumerate(self.conns):
            in_flight = self._flight is not None and self._flight.conn is conn
            if (conn.closed or conn.broken) and not in_flight:
                conn.close()
                self.log.warning("Reconnecting to Postgres (a connection was lost)")
                self.conns[i] = self.job.connect()

    # --- team -------------------------------------------------------------------------------------

    def _run_team(self, team_id: int, finished: list[Any]) -> None:
        """Run one team. Its last batch may still be committing when this returns: the team is
        finished (ledger, sink, `finished`) once that batch landed, while the next team starts."""
        job = self.job
        assert self._reader is not None
        self._ensure_conns()
        state = _TeamState(job.new_team(team_id), finished)
        self.log.info("Team %d: %s", team_id, job.team_intro(team_id))
        try:
            if not job.dry_run:
                self._control.call(ledger.start_team, job.ledger_job_id, team_id, job.ledger_chunk(team_id))
                state.resumed = self._control.call(persons.job_touched_team, job.ledger_job_id, team_id)
            self._run_batches(team_id, state)
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R11.2)
            if self._flight is not None:
                self._land(state, quiet=True)
            self._fail_team(state, exc, self.conns)
        finally:
            self._reader.finish_team(team_id)
        state.ran = True
        if self._flight is None or self._flight.state is not state:
            self._finish_team(state)

    def _finish_team(self, state: _TeamState) -> None:
        r = state.team
        r.failures = [
            (str(f.person_uuid), f.outcome, f.reason or "")
            for f in state.failures[: ledger.FAILURES_KEPT]
            if f.outcome in PERSON_FAILURES
        ]
        if r.status == ledger.RUNNING:
            r.status, r.error = finished_team_status(r.outcomes)
            if r.error:
                self.log.warning("Team %d %s", r.team_id, r.error)
            if r.processed == 0:
                self.log.info("Team %d: nothing to %s", r.team_id, self.job.nothing_to)
        r.duration_seconds = time.monotonic() - state.started
        self.log.info(
            "Team %d %s: processed=%d %s=%d skipped=%d commits=%d (%.1fs)",
            r.team_id,
            r.status,
            r.processed,
            self.job.updated_label,
            r.updated,
            r.skipped,
            r.commits,
            r.duration_seconds,
        )
        state.finished.append(r)
        self.sink.team_finished(r)
        self._record_team(r)

    def _record_team(self, r: Any) -> None:
        job = self.job
        if job.dry_run:
            return
        self._control.call(
            ledger.finish_team,
            job.ledger_job_id,
            r.team_id,
            status=r.status,
            error=r.error,
            processed=r.processed,
            updated=r.updated,
            skipped=r.skipped,
            outcomes={
                **{o: r.outcomes.get(o, 0) for o in job.outcomes},
                job.already_key: r.already_done,
                "failures": [
                    {"person_uuid": u, "outcome": o, "reason": reason} for u, o, reason in r.failures
                ],
            },
            commits=r.commits,
            duration_seconds=r.duration_seconds,
        )

    def _confirm_deliveries(self, teams: list[Any]) -> None:
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
            self.log.error("Team %d: %s", team.team_id, error)
            team.status = ledger.FAILED
            team.error = f"{team.error}; {error}" if team.error else error
            self._record_team(team)

    def _fail_team(self, state: _TeamState, exc: Exception, conns: Sequence[psycopg.Connection]) -> None:
        """The team's open batch (on `conns`) is rolled back; its staged persons become team_failed,
        committed batches stay."""
        self.log.exception("Team %d failed: %s", state.team.team_id, exc)
        for conn in conns:
            try:
                conn.rollback()
            except psycopg.Error:
                pass
            if conn.broken or conn.closed:
                conn.close()  # reopened when the next team starts (_ensure_conns)
        if any(conn.closed for conn in conns):
            # What ended this connection (a restart, a failover, terminated backends) may have ended the
            # idle one too, unnoticed until its next statement would fail the next team: start afresh.
            for conn in self.conns:
                if self._flight is None or self._flight.conn is not conn:
                    conn.close()
        for held in state.retry:  # never written: their lines come out as team_failed too
            self.sink.stage(held)
        state.team.outcomes[TEAM_FAILED] += state.staged_count + len(state.retry)
        state.retry = []
        state.discard_staged()
        self.sink.batch_failed()
        state.team.status = ledger.FAILED
        state.team.error = f"{type(exc).__name__}: {exc}"

    # --- batch ------------------------------------------------------------------------------------

    def _run_batches(self, team_id: int, state: _TeamState) -> None:
        """Chunk after chunk: lock and decide on the open batch's connection; a batch's last chunk is
        written and committed by the writer thread (the flight) while the next batch, of this team or
        the next, starts on the other connection. The next batch's results count (are staged) only once
        the flight landed. Returns with this team's last batch possibly still in flight."""
        job = self.job
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
            if job.batch_size > 0 and state.in_batch + len(results) >= job.batch_size:
                # The chunk's results are staged once its write landed (they may change: see _settle).
                commit = bool(state.batch_writes) and not job.dry_run
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
            commit = bool(state.batch_writes) and not job.dry_run
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
            batches = flight.outbox if written is None else [*flight.outbox, *written.outbox]
            self._batch_closed(flight.state, committed, batches)
        if flight.state is not current and flight.state.ran:
            # The flight was that team's last batch: its retries run on the connection it freed.
            if flight.state.team.status == ledger.RUNNING:
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
                self.job.ledger_job_id,
                team_id,
                writes,
                backup=self.job.backup,
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

    def _batch_closed(self, state: _TeamState, committed: bool, batches: list[persons.OutboxBatch]) -> None:
        """After a batch's commit: count it, hand its outbox batches to the publishing thread, and make
        its persons' results final."""
        team_id = state.team.team_id
        state.batches += 1
        if committed:
            state.team.commits += 1
            self.log.info(
                "Team %d: committed batch %d (%d persons, %d updates)",
                team_id,
                state.batches,
                state.in_batch,
                state.batch_writes,
            )
            if self.publisher is not None and batches:
                self._publishing = [f for f in self._publishing if not f.done()]
                while len(self._publishing) >= PUBLISH_BACKLOG:  # Kafka is behind: wait for it
                    self._publishing.pop(0).result()
                self._publishing.append(self._publish_pool.submit(self._publish_batch, team_id, batches))
        state.accept_staged()
        self.sink.batch_closed()

    def _publish_batch(self, team_id: int, batches: list[persons.OutboxBatch]) -> None:
        """Produce a committed batch's messages and mark the outbox batches confirmed so far published
        (publishing thread)."""
        assert self.publisher is not None
        try:
            produced = sum(self._control.call(self.publisher.produce_batch, batch) for batch in batches)
            self._control.call(self.publisher.mark_published)
            self.log.debug("Team %d: %d messages sent to Kafka", team_id, produced)
            faults.point("after_batch")
        except Exception as exc:  # noqa: BLE001 - reported as the team's failure at the end of the run
            self.log.exception("Team %d: publishing failed", team_id)
            self._publish_errors.setdefault(team_id, f"publishing failed: {type(exc).__name__}: {exc}")

    def _stage(self, state: _TeamState, results: list[Any]) -> None:
        for result in results:
            state.stage(result, counts_as_update=self._counts_as_update(result))
            self.sink.stage(result)

    def _counts_as_update(self, result: Any) -> bool:
        return bool(result.outcome == self.job.updated_outcome and not self.job.dry_run)

    def _settle(
        self,
        state: _TeamState,
        results: list[Any],
        written: persons.ChunkWritten | None,
        *,
        final: bool = False,
    ) -> None:
        """Stage results as the write turned them out: a person whose row had changed since it was read
        was not written (version_conflict), one whose value Postgres refused fails alone
        (invalid_value). Version conflicts are held back for the end-of-team retry unless `final`."""
        team_id = state.team.team_id
        if written is not None and (written.lost or written.invalid):
            lost = set(written.lost)
            for r in results:
                uuid = r.person_uuid
                if uuid in lost:
                    log_lost = self.log.warning if final else self.log.info
                    log_lost("Person %s of team %d: its row changed since it was read", uuid, team_id)
                    r.outcome, r.reason = VERSION_CONFLICT, CHANGED_UNDER_WRITE
                    r.properties_after = r.version_after = None
                elif uuid in written.invalid:
                    r.outcome, r.reason = INVALID_VALUE, written.invalid[uuid]
                    r.properties_after = r.version_after = None
                    self.log.warning("Person %s of team %d: %s", uuid, team_id, r.reason)
        for r in results:
            if r.outcome == VERSION_CONFLICT and not final:
                state.hold(r)
                continue
            if r.outcome in PERSON_FAILURES:
                state.failures.append(r)
            state.stage(r, counts_as_update=self._counts_as_update(r))
            self.sink.stage(r)

    # --- chunk ------------------------------------------------------------------------------------

    def _process_chunk(
        self, conn: psycopg.Connection, team_id: int, chunk: list[Any], state: _TeamState
    ) -> tuple[list[Any], list[persons.PersonWrite]]:
        """Lock the chunk's rows and decide every person; returns the results and what to write."""
        job = self.job
        chunk, early = job.screen(team_id, chunk)
        uuids = [job.uuid_of(item) for item in chunk]
        done = persons.applied_by_job(conn, job.ledger_job_id, team_id, uuids) if state.resumed else {}
        faults.point("before_lock")
        lockable = [u for u in uuids if u not in done and u not in early]
        rows, missing, locked_out = self._lock(conn, team_id, lockable)
        prefetched = job.prefetch(
            conn, team_id, [i for i, u in zip(chunk, uuids, strict=True) if u in rows], rows
        )
        results: list[Any] = []
        writes: list[persons.PersonWrite] = []
        for item, uuid in zip(chunk, uuids, strict=True):
            if uuid in early:
                result = early[uuid]
            elif uuid in done:
                result = job.already_done(item, done[uuid])
            elif uuid in missing:
                result = job.unsettled(item, NOT_FOUND)
            elif uuid in locked_out:
                result = job.unsettled(item, VERSION_CONFLICT, HELD)
            else:
                result, write = job.decide(item, rows[uuid], prefetched)
                if write is not None:
                    writes.append(write)
            if result.outcome == NOT_FOUND:
                self.log.warning("Person %s of team %d: %s", job.describe(item), team_id, result.outcome)
            elif result.outcome == VERSION_CONFLICT:  # a warning only if the end-of-team retry fails too
                self.log.info(
                    "Person %s of team %d: row held; retried at the end of the team",
                    job.describe(item),
                    team_id,
                )
            results.append(result)
        return results, writes

    def _lock(
        self, conn: psycopg.Connection, team_id: int, uuids: list[UUID]
    ) -> tuple[dict[UUID, persons.PgPerson], set[UUID], set[UUID]]:
        """Lock (dry run: read) the rows. Returns (rows, uuids without a row, uuids locked by others)."""
        lock = not self.job.dry_run
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
            self.log.info(
                "Team %d: %d persons locked by another transaction; retrying", team_id, len(pending)
            )
            time.sleep(LOCK_RETRY_WAITS[attempt])
        return rows, missing, set(pending)

    # --- the end-of-team retry --------------------------------------------------------------------

    def _retry_guarded(self, state: _TeamState, conn: psycopg.Connection) -> None:
        """The end-of-team retry inside the team's error boundary."""
        try:
            self._retry_conflicts(state, conn)
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R11.2)
            self._fail_team(state, exc, [conn])

    def _retry_conflicts(self, state: _TeamState, conn: psycopg.Connection) -> None:
        """Fault 5/7/8 of issue 11: persons whose row was held by another transaction, or changed under
        the write, are tried once more at the end of their team, in a batch of their own: each row lock
        is waited for (bounded by lock_timeout, as the original did), the row re-read, and the job's
        decision made against it. Those still conflicted stay version_conflict, and the team ends
        incomplete."""
        job = self.job
        pending, state.retry = state.retry, []
        if not pending:
            return
        team_id = state.team.team_id
        self.log.info("Team %d: retrying %d persons, waiting for their rows", team_id, len(pending))
        deadline = time.monotonic() + RETRY_WAIT_BUDGET
        items = [job.item_of(r) for r in pending]
        rows: dict[UUID, persons.PgPerson] = {}
        held: set[UUID] = set()
        for item in items:
            uuid = job.uuid_of(item)
            row = persons.lock_waiting(conn, team_id, uuid, wait=time.monotonic() < deadline)
            if row == persons.HELD:
                held.add(uuid)
            elif isinstance(row, persons.PgPerson):
                rows[uuid] = row
        prefetched = job.prefetch(conn, team_id, [i for i in items if job.uuid_of(i) in rows], rows)
        results: list[Any] = []
        writes: list[persons.PersonWrite] = []
        for item in items:
            uuid = job.uuid_of(item)
            if uuid in held:
                reason = HELD_PAST_LOCK_TIMEOUT
                results.append(job.unsettled(item, VERSION_CONFLICT, reason))
                self.log.warning(
                    "Person %s of team %d: %s (%s)", job.describe(item), team_id, VERSION_CONFLICT, reason
                )
            elif uuid not in rows:
                results.append(job.unsettled(item, NOT_FOUND))
            else:
                result, write = job.decide(item, rows[uuid], prefetched)
                results.append(result)
                if write is not None:
                    writes.append(write)
        committed, written = self._write(conn, team_id, writes, True, bool(writes), True)
        self._settle(state, results, written, final=True)
        self._batch_closed(state, committed, [] if written is None else written.outbox)


@dataclass
class _Flight:
    """A batch whose last chunk the writer thread is writing and committing."""

    state: _TeamState
    conn: psycopg.Connection
    future: Future[tuple[bool, persons.ChunkWritten | None]]
    outbox: list[persons.OutboxBatch]  # of the batch's earlier chunks
    results: list[Any]  # of the chunk being written, staged when it landed


_END = object()


class _Reader:
    """Reads the chunks of every team, in order, on a thread of its own, a couple of chunks ahead of
    the consumer (bounded: memory stays flat). Each team's chunks end with one terminal item: the end,
    or the error that stopped its reading (raised in the consumer)."""

    def __init__(self, chunks: Callable[[int], Iterator[list[Any]]], team_ids: Sequence[int]):
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
            raise RuntimeError(f"chunk reader out of step: chunk of team {owner} while running {team_id}")
        if item is _END or isinstance(item, BaseException):
            self._finished.add(team_id)
        return item

    def team_chunks(self, team_id: int) -> Iterator[list[Any]]:
        while team_id not in self._finished:
            item = self._take(team_id)
            if item is _END:
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


class _TeamState:
    """Counters of one team; those of the open batch are staged until it closes."""

    def __init__(self, team: Any, finished: list[Any]):
        self.team = team
        self.finished = finished  # where the result goes once the team is done
        self.started = time.monotonic()
        self.ran = False  # all its chunks handled (its last batch may still be in flight)
        self.in_batch = 0
        self.batch_writes = 0
        self.batches = 0
        self.resumed = False
        self.failures: list[Any] = []  # persons not written: version_conflict, invalid_value
        self.retry: list[Any] = []  # version conflicts held back for the end-of-team retry
        self.outbox: list[persons.OutboxBatch] = []  # of the open batch
        self.kept_messages = 0
        self._staged: Counter[str] = Counter()
        self._staged_updates = 0
        self._staged_already = 0

    @property
    def staged_count(self) -> int:
        return sum(self._staged.values())

    def stage(self, result: Any, *, counts_as_update: bool) -> None:
        self.in_batch += 1
        self._staged[result.outcome] += 1
        self._staged_updates += counts_as_update
        self._staged_already += result.already_done

    def hold(self, result: Any) -> None:
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
