"""A chunk decided, before its write (`decide_chunk`): the job screens it (persons that fail up front),
the persons an earlier attempt of the job already wrote are looked up in the outbox (only when that
attempt touched the team) and reported, never written twice. The job's set-based write then settles
what it can in one statement (apply: the persons at their baseline version are locked, decided and
written; `Job.write_set`), and only the rest take the per-person path: their rows are locked with
`SKIP LOCKED` in LOCK_ATTEMPTS quick attempts (`lock_rows`, `runner.rules.engine`), the job reads what
it needs for the locked rows (its prefetch) and decides every person.

Fault point (`runner.config.faults`): `before_lock` (a chunk's rows are about to be locked; the batch
before it may still be committing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Generic
from uuid import UUID

import psycopg

from runner.config import faults
from runner.engine.job import ItemT, Job, PrefetchT, SetDecided, TeamT
from runner.engine.stages import StageClock
from runner.rules.engine import (
    HELD,
    LOCK_ATTEMPTS,
    LOCK_RETRY_WAITS,
    NOT_FOUND,
    TEAM_FAILED,
    VERSION_CONFLICT,
)
from runner.rules.records import AppliedByJob, PersonOutcome, PersonWrite, PgPerson
from runner.stores import persons
from runner.stores.persons import OutboxBatch


@dataclass
class Decided(Generic[ItemT]):
    """A decided chunk: every person's result in chunk order, what the per-person path still has to
    write, and what the set-based write already wrote in the batch's transaction (its updates count
    for the batch's commit, its outbox batches are published with the batch's)."""

    results: list[PersonOutcome[ItemT]]
    writes: list[PersonWrite]
    set_updated: int = 0
    set_outbox: list[OutboxBatch] = field(default_factory=list)


class ChunkWriteFailed(Exception):
    """The write of a decided chunk failed (not for a value: the team fails): its set-based write, or a
    deciding flight's per-person write or commit (`runner.engine.flights`). Its persons reached the
    write, so they count as `team_failed` (`results`), as they would had the write been per-person."""

    def __init__(self, error: Exception, results: list[PersonOutcome[Any]]):
        super().__init__(str(error))
        self.error = error
        self.results = results


def decide_chunk(
    job: Job[ItemT, TeamT, PrefetchT],
    conn: psycopg.Connection,
    team_id: int,
    chunk: list[ItemT],
    *,
    resumed: bool,
    keep_messages: bool = True,
    clock: StageClock | None = None,
) -> Decided[ItemT]:
    """Settle what the job's set-based write can, then lock the other persons' rows and decide them.
    `resumed`: an earlier attempt of the job touched the team; `keep_messages`: the set-based write
    returns its Kafka messages. `clock` times the stages (set_write, lock, prefetch, decide)."""
    clock = clock or StageClock()
    with clock.timed("decide"):
        chunk, early = job.screen(team_id, chunk)
        uuids = [job.uuid_of(item) for item in chunk]
    with clock.timed("lock"):
        done = persons.applied_by_job(conn, job.ledger_job_id, team_id, uuids) if resumed else {}
        faults.point("before_lock")
        lockable = [u for u in uuids if u not in done and u not in early]
    settled: SetDecided[ItemT] | None = None
    if lockable and job.set_based and not job.dry_run:
        with clock.timed("set_write"):
            pending = set(lockable)
            items = [i for i, u in zip(chunk, uuids, strict=True) if u in pending]
            try:
                settled = job.write_set(conn, team_id, items, keep_messages=keep_messages)
            except Exception as exc:  # noqa: BLE001 - the team fails; its persons count as team_failed
                raise ChunkWriteFailed(exc, [job.unsettled(i, TEAM_FAILED) for i in chunk]) from exc
        if settled is not None:
            lockable = [u for u in lockable if u not in settled.results]
    with clock.timed("lock"):
        rows, missing, locked_out = lock_rows(conn, team_id, lockable, lock=not job.dry_run, log=job.log)
    with clock.timed("prefetch"):
        prefetched = job.prefetch(
            conn, team_id, [i for i, u in zip(chunk, uuids, strict=True) if u in rows], rows
        )
    with clock.timed("decide"):
        results, writes = _decide_all(
            job,
            team_id,
            chunk,
            uuids,
            early,
            done,
            {} if settled is None else settled.results,
            rows,
            missing,
            locked_out,
            prefetched,
        )
    if settled is None:
        return Decided(results, writes)
    return Decided(results, writes, settled.updated, settled.outbox)


def _decide_all(
    job: Job[ItemT, TeamT, PrefetchT],
    team_id: int,
    chunk: list[ItemT],
    uuids: list[UUID],
    early: dict[UUID, PersonOutcome[ItemT]],
    done: dict[UUID, AppliedByJob],
    settled: dict[UUID, PersonOutcome[ItemT]],
    rows: dict[UUID, PgPerson],
    missing: set[UUID],
    locked_out: set[UUID],
    prefetched: PrefetchT,
) -> tuple[list[PersonOutcome[ItemT]], list[PersonWrite]]:
    results: list[PersonOutcome[ItemT]] = []
    writes: list[PersonWrite] = []
    for item, uuid in zip(chunk, uuids, strict=True):
        if uuid in early:
            result = early[uuid]
        elif uuid in done:
            result = job.already_done(item, done[uuid])
        elif uuid in settled:
            result = settled[uuid]
        elif uuid in missing:
            result = job.unsettled(item, NOT_FOUND)
        elif uuid in locked_out:
            result = job.unsettled(item, VERSION_CONFLICT, HELD)
        else:
            result, write = job.decide(item, rows[uuid], prefetched)
            if write is not None:
                writes.append(write)
        if result.outcome == NOT_FOUND:
            job.log.warning("Person %s of team %d: %s", job.describe(item), team_id, result.outcome)
        elif result.outcome == VERSION_CONFLICT:  # a warning only if the end-of-team retry fails too
            job.log.info(
                "Person %s of team %d: row held; retried at the end of the team", job.describe(item), team_id
            )
        results.append(result)
    return results, writes


def lock_rows(
    conn: psycopg.Connection, team_id: int, uuids: list[UUID], *, lock: bool, log: logging.Logger
) -> tuple[dict[UUID, PgPerson], set[UUID], set[UUID]]:
    """Lock (`lock=False`, a dry run: read) the rows, retrying those another transaction holds.
    Returns (rows, uuids without a row, uuids still locked by others)."""
    rows: dict[UUID, PgPerson] = {}
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
