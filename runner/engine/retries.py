"""The end-of-team retry (faults 5/7/8 of issue 11): persons whose row another transaction held on every
quick attempt, or whose row changed between its lock and the write, are tried once more at the end of
their team, in a batch of their own (`decide_again`; the engine writes and commits it): each row lock is
waited for (bounded by the session's lock_timeout while RETRY_WAIT_BUDGET lasts), the row re-read, and
the job's decision made against it. Those still conflicted stay `version_conflict`, and the team ends
incomplete."""

from __future__ import annotations

import time
from uuid import UUID

import psycopg

from runner.engine.job import ItemT, Job, PrefetchT, TeamT
from runner.rules.engine import HELD_PAST_LOCK_TIMEOUT, NOT_FOUND, RETRY_WAIT_BUDGET, VERSION_CONFLICT
from runner.rules.records import PersonOutcome, PersonWrite, PgPerson
from runner.stores import persons


def decide_again(
    job: Job[ItemT, TeamT, PrefetchT],
    conn: psycopg.Connection,
    team_id: int,
    pending: list[PersonOutcome[ItemT]],
) -> tuple[list[PersonOutcome[ItemT]], list[PersonWrite]]:
    """Lock the conflicted persons' rows, waiting for them, and decide them again; returns the results
    and what to write."""
    job.log.info("Team %d: retrying %d persons, waiting for their rows", team_id, len(pending))
    deadline = time.monotonic() + RETRY_WAIT_BUDGET
    items = [r.item for r in pending]
    rows: dict[UUID, PgPerson] = {}
    held: set[UUID] = set()
    for item in items:
        uuid = job.uuid_of(item)
        row = persons.lock_waiting(conn, team_id, uuid, wait=time.monotonic() < deadline)
        if row == persons.HELD:
            held.add(uuid)
        elif isinstance(row, PgPerson):
            rows[uuid] = row
    prefetched = job.prefetch(conn, team_id, [i for i in items if job.uuid_of(i) in rows], rows)
    results: list[PersonOutcome[ItemT]] = []
    writes: list[PersonWrite] = []
    for item in items:
        uuid = job.uuid_of(item)
        if uuid in held:
            reason = HELD_PAST_LOCK_TIMEOUT
            results.append(job.unsettled(item, VERSION_CONFLICT, reason))
            job.log.warning(
                "Person %s of team %d: %s (%s)", job.describe(item), team_id, VERSION_CONFLICT, reason
            )
        elif uuid not in rows:
            results.append(job.unsettled(item, NOT_FOUND))
        else:
            result, write = job.decide(item, rows[uuid], prefetched)
            results.append(result)
            if write is not None:
                writes.append(write)
    return results, writes
