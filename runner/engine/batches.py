"""The batches of a run, pipelined (`BatchPipeline`): batches (commit units) alternate between two
connections, so while the writer thread writes and commits one batch (the flight), the engine's thread
already locks and decides the next on the other connection. The next batch's results are staged (and its
writes sent) only once the one before it committed: commits and results stay in order, and a failed
batch stops the team before the next one counts as processed. A team's last batch may still be in flight
when the next team starts; the team is handed back (`team_done`) once it landed, after its end-of-team
retry.

A chunk that is a whole batch of a job with a set-based write (apply) flies further: a worker decides
and writes it (the set statement, then the per-person exceptions) on its connection while the batch
before it is still being written on the other, so two Postgres backends work at once. It commits only
when it lands, on this thread, after the batch before it committed; when that one failed its team, it
is rolled back instead (its persons count as `team_failed`).

Also here: staging results as the write turned them out, closing a batch (counted, its outbox batches
handed to the publishing thread), and a failing team's open batch rolled back (its persons become
`team_failed`), with the connections it may have lost closed, to be reopened for the next team.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic

import psycopg

from runner.engine import flights, pacing, retries, writing
from runner.engine.deciding import ChunkWriteFailed, decide_chunk
from runner.engine.flights import Flight, lost, rollback
from runner.engine.job import EngineSink, ItemT, Job, PrefetchT, TeamT
from runner.engine.publishing import Publishing
from runner.engine.stages import StageClock
from runner.engine.team_state import TeamState
from runner.rules.engine import KEPT_MESSAGES, PERSON_FAILURES, VERSION_CONFLICT
from runner.rules.records import PersonOutcome, PersonWrite
from runner.stores import ledger
from runner.stores.persons import ChunkWritten, OutboxBatch


class BatchPipeline(Generic[ItemT, TeamT, PrefetchT]):
    """The batches of every team of a run, on two connections and the writer thread."""

    def __init__(
        self,
        job: Job[ItemT, TeamT, PrefetchT],
        sink: EngineSink[PersonOutcome[ItemT], TeamT],
        throttle: pacing.Throttle,
        publishing: Publishing | None,
        team_done: Callable[[TeamState[ItemT, TeamT]], None],
        clock: StageClock | None = None,
    ):
        self.job = job
        self.log: logging.Logger = job.log
        self.sink = sink
        self.throttle = throttle
        self.publishing = publishing
        self.team_done = team_done  # a team whose last batch landed (and its retry ran)
        self.clock = clock or StageClock()
        # Two transactions in flight: batch n on conns[n % 2].
        self.conns: list[psycopg.Connection] = []
        self._turn = 0
        # In landing order; at most one between chunks (two while a deciding flight starts).
        self._flights: list[Flight[ItemT, TeamT]] = []
        self._writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recon-writer")

    def open(self) -> None:
        self.conns = [self.job.connect() for _ in range(2)]

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        for conn in self.conns:
            conn.close()

    def ensure_conns(self) -> None:
        """Reopen connections a failed team left lost (bounded backoff; raises when Postgres stays
        away, which ends the run)."""
        for i, conn in enumerate(self.conns):
            if lost(conn) and not self._flying(conn):
                conn.close()
                self.log.warning("Reconnecting to Postgres (a connection was lost)")
                self.conns[i] = self.job.connect()

    def in_flight(self, state: TeamState[ItemT, TeamT]) -> bool:
        """Whether the team's last batch is still being written and committed."""
        return any(f.state is state for f in self._flights)

    def _flying(self, conn: psycopg.Connection) -> bool:
        return any(f.conn is conn for f in self._flights)

    def land_last(self) -> None:
        """At the end of the run: wait for the last batch (and finish its team)."""
        while self._flights:
            self._land(None)

    def abort(self, state: TeamState[ItemT, TeamT], exc: Exception) -> None:
        """The team's error boundary (R11.2): its flights, if any, land (quietly), its open batch is
        rolled back, and the team fails."""
        while self._flights:
            self._land(state, quiet=True)
        self._fail_team(state, exc, self.conns)

    def _fail_team(
        self, state: TeamState[ItemT, TeamT], exc: Exception, conns: Sequence[psycopg.Connection]
    ) -> None:
        """The team's open batch (on `conns`) is rolled back; its staged persons become team_failed,
        committed batches stay."""
        self.log.exception("Team %d failed: %s", state.team.team_id, exc)
        for conn in conns:
            rollback(conn)
            if lost(conn):
                conn.close()  # reopened when the next team starts (ensure_conns)
        if any(conn.closed for conn in conns):
            # What ended this connection (a restart, a failover, terminated backends) may have ended the
            # idle one too, unnoticed until its next statement would fail the next team: start afresh.
            for conn in self.conns:
                if not self._flying(conn):
                    conn.close()
        for held in state.fail(f"{type(exc).__name__}: {exc}"):
            self.sink.stage(held)  # never written: their lines come out as team_failed too
        self.sink.batch_failed()

    def run(self, team_id: int, state: TeamState[ItemT, TeamT], chunks: Iterable[list[ItemT]]) -> None:
        """Chunk after chunk: lock and decide on the open batch's connection; a batch's last chunk is
        written and committed by the writer thread (the flight) while the next batch, of this team or
        the next, starts on the other connection. The next batch's results count (are staged) only once
        the flight landed. Returns with this team's last batch possibly still in flight."""
        job = self.job
        for chunk in self.clock.timed_iter("wait_fetch", iter(chunks)):
            self.ensure_conns()  # an earlier team's failure may have closed one (the other is in flight)
            conn = self.conns[self._turn]
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self.throttle.before_batch()  # --max-rate waits only while this batch holds no row lock
            self.throttle.count(len(chunk))
            if flights.decides(job, len(chunk), state.in_batch):
                deciding = flights.submit(self._writer, job, self.clock, conn, state, chunk)
                self._flights.append(Flight(state, conn, deciding, [], [], chunk=chunk))
                self._turn ^= 1
                if len(self._flights) > 1:
                    self._land(state)  # the batch before lands first (or fails the team)
                continue
            # Messages are kept in memory up to KEPT_MESSAGES per batch (the chunk may write them all).
            keep_set = state.kept_messages + len(chunk) <= KEPT_MESSAGES
            try:
                decided = decide_chunk(
                    job, conn, team_id, chunk, resumed=state.resumed, keep_messages=keep_set, clock=self.clock
                )
            except ChunkWriteFailed as failed:
                while self._flights:
                    self._land(state)  # the batch before counts first (or fails the team itself)
                self._stage(state, failed.results)  # they count as team_failed
                raise failed.error from None
            results, writes = decided.results, decided.writes
            while self._flights:
                self._land(state)  # may close this team's previous batch: the counts below are this one's
            state.batch_writes += len(writes) + decided.set_updated
            for batch in decided.set_outbox:
                state.add_outbox(batch)
            keep = state.kept_messages + len(writes) <= KEPT_MESSAGES
            if job.batch_size > 0 and state.in_batch + len(results) >= job.batch_size:
                # The chunk's results are staged once its write landed (they may change: see _settle).
                commit = bool(state.batch_writes) and not job.dry_run
                future = self._writer.submit(self._write, conn, team_id, writes, True, commit, keep)
                self._flights.append(Flight(state, conn, future, state.take_outbox(), results))
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
        while self._flights and self._flights[0].state is not state:
            self._land(state)  # an earlier team's last batch: that team finishes first
        self.ensure_conns()
        # While this team's last batch is in flight the staged counts are that batch's; else they are
        # those of a partial batch still open here.
        if not self._flights and state.in_batch:
            conn = self.conns[self._turn]
            self._turn ^= 1
            commit = bool(state.batch_writes) and not job.dry_run
            committed, _ = self._write(conn, team_id, [], True, commit, False)
            self._batch_closed(state, committed, state.take_outbox())
        if not self._flights:
            self._retry_conflicts(state, self.conns[self._turn])

    def _land(self, current: TeamState[ItemT, TeamT] | None, *, quiet: bool = False) -> None:
        """Wait for the oldest flight's write (a deciding flight: its decision and write, then commit it
        here), then close its batch (and finish its team if that team is done). A failed flight of
        `current`'s team raises (unless `quiet`: the caller is failing the team anyway); a failed flight
        of an earlier team fails that team only. Either way the team's later flights are doomed."""
        flight = self._flights.pop(0)
        try:
            with self.clock.timed("wait_write"):
                outcome = flight.future.result()
            if flight.decides:
                committed, written = flights.commit_decided(self.job, self.clock, flight, outcome)
            else:
                committed, written = outcome
        except Exception as exc:  # noqa: BLE001 - the flight's team fails (below or in the caller)
            error: Exception = exc
            if isinstance(exc, ChunkWriteFailed):
                flight.results, error = exc.results, exc.error
            redo = not (quiet or flight.doomed or flights.commit_uncertain(exc))
            if redo and flight.collateral and lost(flight.conn):
                self._again(flight)
                self._land(current)
                return
            self._stage(flight.state, flight.results)  # they count as team_failed
            if flight.doomed:  # its team failed already (the caller fails it): never committed
                self.log.info(
                    "Team %d: a batch beside the failed one rolled back (%s)",
                    flight.state.team.team_id,
                    error,
                )
                rollback(flight.conn)
                return
            outage = lost(flight.conn)
            for later in self._flights:
                later.doomed = later.doomed or later.state is flight.state
                later.collateral = later.collateral or (outage and later.state is not flight.state)
            if flight.state is current:
                if quiet:
                    return
                raise error from None
            self._fail_team(flight.state, error, [flight.conn])
        else:
            self._settle(flight.state, flight.results, written)
            batches = flight.outbox if written is None else [*flight.outbox, *written.outbox]
            self._batch_closed(flight.state, committed, batches)
        if flight.state is not current and flight.state.ran:
            # The flight was that team's last batch: its retries run on the connection it freed.
            if flight.state.team.status == ledger.RUNNING:
                self._retry_guarded(flight.state, flight.conn)
            self.team_done(flight.state)

    def _again(self, flight: Flight[ItemT, TeamT]) -> None:
        """A collateral flight (see `Flight.collateral`) flies once more, first in line, on a new
        connection in its old one's place."""
        assert flight.chunk is not None
        self.log.warning(
            "Team %d: a batch lost its connection beside the team before it; running it again",
            flight.state.team.team_id,
        )
        i = next(i for i, conn in enumerate(self.conns) if conn is flight.conn)
        flight.conn.close()
        self.conns[i] = flight.conn = self.job.connect()
        flight.collateral = False
        flight.results = []
        flight.future = flights.submit(
            self._writer, self.job, self.clock, flight.conn, flight.state, flight.chunk
        )
        self._flights.insert(0, flight)

    def _write(
        self,
        conn: psycopg.Connection,
        team_id: int,
        writes: list[PersonWrite],
        closes: bool,
        commit: bool,
        keep_messages: bool,
    ) -> tuple[bool, ChunkWritten | None]:
        return flights.write(self.job, self.clock, conn, team_id, writes, closes, commit, keep_messages)

    def _batch_closed(
        self, state: TeamState[ItemT, TeamT], committed: bool, batches: list[OutboxBatch]
    ) -> None:
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
            if self.publishing is not None and batches:
                self.publishing.submit(team_id, batches)
        with self.clock.timed("results"):
            state.accept_staged()
            self.sink.batch_closed()

    def _stage(self, state: TeamState[ItemT, TeamT], results: list[PersonOutcome[ItemT]]) -> None:
        for result in results:
            state.stage(result, counts_as_update=self._counts_as_update(result))
            self.sink.stage(result)

    def _counts_as_update(self, result: PersonOutcome[ItemT]) -> bool:
        return result.outcome == self.job.updated_outcome and not self.job.dry_run

    def _settle(
        self,
        state: TeamState[ItemT, TeamT],
        results: list[PersonOutcome[ItemT]],
        written: ChunkWritten | None,
        *,
        final: bool = False,
    ) -> None:
        """Stage results as the write turned them out (`runner.engine.writing.settle`). Version conflicts
        are held back for the end-of-team retry unless `final`."""
        with self.clock.timed("results"):
            writing.settle(results, written, self.job.uuid_of, state.team.team_id, self.log, final=final)
            for r in results:
                if r.outcome == VERSION_CONFLICT and not final:
                    state.hold(r)
                    continue
                if r.outcome in PERSON_FAILURES:
                    state.failures.append(r)
                state.stage(r, counts_as_update=self._counts_as_update(r))
                self.sink.stage(r)

    def _retry_guarded(self, state: TeamState[ItemT, TeamT], conn: psycopg.Connection) -> None:
        """The end-of-team retry inside the team's error boundary."""
        try:
            self._retry_conflicts(state, conn)
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R11.2)
            self._fail_team(state, exc, [conn])

    def _retry_conflicts(self, state: TeamState[ItemT, TeamT], conn: psycopg.Connection) -> None:
        """The persons held back are decided again (`runner.engine.retries`), then written and committed
        in a batch of their own; their outcome is final."""
        pending, state.retry = state.retry, []
        if not pending:
            return
        team_id = state.team.team_id
        with self.clock.timed("retry"):
            results, writes = retries.decide_again(self.job, conn, team_id, pending)
        committed, written = self._write(conn, team_id, writes, True, bool(writes), True)
        self._settle(state, results, written, final=True)
        self._batch_closed(state, committed, [] if written is None else written.outbox)
