"""A batch in flight (`Flight`) of `runner.engine.batches`, and the work of a deciding flight: a chunk that is
a whole batch of a job with a set-based write, decided and written on a writer thread (`decide_and_write`)
and committed once it lands, in order, on the engine's thread (`commit_decided`).
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Generic

import psycopg

from runner.engine import writing
from runner.engine.deciding import ChunkWriteFailed, Decided, decide_chunk
from runner.engine.job import ItemT, Job, PrefetchT, TeamT
from runner.engine.stages import StageClock
from runner.engine.team_state import TeamState
from runner.rules.engine import KEPT_MESSAGES
from runner.rules.records import PersonOutcome
from runner.stores.persons import ChunkWritten, OutboxBatch


@dataclass
class Flight(Generic[ItemT, TeamT]):
    """A batch whose last chunk a writer thread is writing and committing; a deciding flight (`chunk`
    set) is deciding and writing that chunk, and is committed once it lands."""

    state: TeamState[ItemT, TeamT]
    conn: psycopg.Connection
    future: Future[Any]  # (committed, written); a deciding flight's: (Decided, written)
    outbox: list[OutboxBatch]  # of the batch's earlier chunks
    results: list[PersonOutcome[ItemT]]  # of the chunk being written, staged when it landed
    chunk: list[ItemT] | None = None  # a deciding flight's chunk
    doomed: bool = False  # a batch before it failed the team: rolled back when it lands
    # It ran beside an earlier team's flight that lost its connection: if its own connection was lost
    # too (the same outage), nothing of it committed and it runs once more on a new connection.
    collateral: bool = False

    @property
    def decides(self) -> bool:
        return self.chunk is not None


class CommitFailed(ChunkWriteFailed):
    """A deciding flight's commit failed (see `commit_uncertain`)."""


def decides(job: Job[Any, Any, Any], size: int, in_batch: int) -> bool:
    """Whether a chunk flies as a deciding flight: a whole batch (it opens and closes one) of a job with a
    set-based write that writes."""
    return job.set_based and not job.dry_run and 0 < job.batch_size <= size and in_batch == 0


def submit(
    writer: Executor,
    job: Job[ItemT, TeamT, PrefetchT],
    clock: StageClock,
    conn: psycopg.Connection,
    state: TeamState[ItemT, TeamT],
    chunk: list[ItemT],
) -> Future[tuple[Decided[ItemT], ChunkWritten | None]]:
    """A deciding flight's work handed to a writer thread."""
    return writer.submit(decide_and_write, job, clock, conn, state.team.team_id, chunk, state.resumed)


def decide_and_write(
    job: Job[ItemT, TeamT, PrefetchT],
    clock: StageClock,
    conn: psycopg.Connection,
    team_id: int,
    chunk: list[ItemT],
    resumed: bool,
) -> tuple[Decided[ItemT], ChunkWritten | None]:
    """A deciding flight's work (on a writer thread): the chunk decided (the set statement writes its
    happy path), then the exceptions' per-person writes. Not committed: that waits until it lands."""
    decided = decide_chunk(
        job, conn, team_id, chunk, resumed=resumed, keep_messages=len(chunk) <= KEPT_MESSAGES, clock=clock
    )
    kept = sum(len(b.messages) for b in decided.set_outbox if b.messages is not None)
    written = None
    if decided.writes:
        keep = kept + len(decided.writes) <= KEPT_MESSAGES
        try:
            _, written = write(job, clock, conn, team_id, decided.writes, False, False, keep)
        except Exception as exc:
            raise ChunkWriteFailed(exc, decided.results) from exc
    return decided, written


def commit_decided(
    job: Job[ItemT, TeamT, PrefetchT],
    clock: StageClock,
    flight: Flight[ItemT, TeamT],
    outcome: tuple[Decided[ItemT], ChunkWritten | None],
) -> tuple[bool, ChunkWritten | None]:
    """A deciding flight landed: its batch is committed (if it wrote anything) here, in order, then
    counted; a doomed one raises (the caller rolls it back: its persons count as team_failed)."""
    decided, written = outcome
    flight.results = decided.results
    if flight.doomed:
        raise RuntimeError("a batch before it failed the team")
    state = flight.state
    writes = len(decided.writes) + decided.set_updated
    try:
        committed, _ = write(
            job, clock, flight.conn, state.team.team_id, [], True, bool(state.batch_writes + writes), False
        )
    except Exception as exc:
        raise CommitFailed(exc, decided.results) from exc
    state.batch_writes += writes
    flight.outbox = list(decided.set_outbox)
    return committed, written


def write(
    job: Job[Any, Any, Any],
    clock: StageClock,
    conn: psycopg.Connection,
    team_id: int,
    writes: list[Any],
    closes: bool,
    commit: bool,
    keep_messages: bool,
) -> tuple[bool, ChunkWritten | None]:
    """`runner.engine.writing.write` with the job's settings."""
    return writing.write(
        conn,
        job.ledger_job_id,
        team_id,
        writes,
        backup=job.backup,
        closes=closes,
        commit=commit,
        keep_messages=keep_messages,
        clock=clock,
    )


def commit_uncertain(exc: Exception) -> bool:
    """Whether a deciding flight failed in its COMMIT without the server saying so: the connection
    dropped with no error from Postgres, so the batch may have committed. (An error Postgres sent in
    reply to COMMIT, such as a terminated backend's, means it did not.)"""
    if not isinstance(exc, CommitFailed):
        return False
    return not (isinstance(exc.error, psycopg.Error) and exc.error.sqlstate is not None)


def lost(conn: psycopg.Connection) -> bool:
    return bool(conn.closed or conn.broken)


def rollback(conn: psycopg.Connection) -> None:
    try:
        conn.rollback()
    except psycopg.Error:
        pass  # a lost connection: nothing of its transaction remains
