"""A batch's writes as the engine makes them: a chunk written (`runner.stores.persons.write_chunk`:
backups, updates and outbox rows, a fixed number of statements) and, at the end of a batch, committed if
the batch wrote anything, else its row locks released (R9.11) (`write`); then what the write turned out
for each person (`settle`): a person whose row changed since it was read was not written
(version_conflict), one whose value Postgres refused fails alone (invalid_value).

Fault points (`runner.config.faults`): `before_commit`, `after_commit` (where `write` closes a batch:
on the writer thread, or on the engine's thread when a deciding flight of `runner.engine.flights`
lands).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from uuid import UUID

import psycopg

from runner.config import faults
from runner.engine.job import ItemT
from runner.engine.stages import StageClock
from runner.rules.engine import CHANGED_UNDER_WRITE, INVALID_VALUE, VERSION_CONFLICT
from runner.rules.records import PersonOutcome, PersonWrite
from runner.stores import persons


def write(
    conn: psycopg.Connection,
    job_id: str,
    team_id: int,
    writes: list[PersonWrite],
    *,
    backup: bool,
    closes: bool,
    commit: bool,
    keep_messages: bool,
    clock: StageClock | None = None,
) -> tuple[bool, persons.ChunkWritten | None]:
    """Write a chunk; when it `closes` its batch, commit the batch if it wrote anything (R9.11,
    `commit`), else release its row locks. Returns whether it committed, and what the chunk's write did.
    Runs on a writer thread (or inline). `clock` times the stages (write, commit)."""
    clock = clock or StageClock()
    written = None
    if writes:
        with clock.timed("write"):
            written = persons.write_chunk(
                conn, job_id, team_id, writes, backup=backup, keep_messages=keep_messages
            )
    if not closes:
        return False, written
    with clock.timed("commit"):
        if commit:
            faults.point("before_commit")
            conn.commit()
            faults.point("after_commit")
            return True, written
        conn.rollback()
    return False, written


def settle(
    results: Sequence[PersonOutcome[ItemT]],
    written: persons.ChunkWritten | None,
    uuid_of: Callable[[ItemT], UUID],
    team_id: int,
    log: logging.Logger,
    *,
    final: bool,
) -> None:
    """Turn the results of a chunk into what its write made of them: a person whose row had changed since
    it was read becomes version_conflict (logged as a warning when `final`: the end-of-team retry's), one
    whose value Postgres refused invalid_value, with its reason."""
    if written is None or not (written.lost or written.invalid):
        return
    lost = set(written.lost)
    for r in results:
        uuid = uuid_of(r.item)
        if uuid in lost:
            log_lost = log.warning if final else log.info
            log_lost("Person %s of team %d: its row changed since it was read", uuid, team_id)
            r.outcome, r.reason = VERSION_CONFLICT, CHANGED_UNDER_WRITE
            r.properties_after = r.version_after = None
        elif uuid in written.invalid:
            r.outcome, r.reason = INVALID_VALUE, written.invalid[uuid]
            r.properties_after = r.version_after = None
            log.warning("Person %s of team %d: %s", uuid, team_id, r.reason)
