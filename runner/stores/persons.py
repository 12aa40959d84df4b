"""The persons store of apply and restore: every statement against `posthog_person` and the outbox rows
written with it (row locks, set-based writes, the job's own history). The connections these statements
run on are in `runner.stores.connections`, the backup table's reads in `runner.stores.backups`.

A chunk of persons is written with a fixed number of statements whatever its size: each person's change
(apply: ClickHouse's SET and SET_ONCE texts, the keys not to write, the keys to remove; restore: the
whole properties) is COPied into a temporary table, then one statement with data-modifying CTEs merges
it on jsonb with the locked row, updates the rows still at the version read, and from the rows it
really changed writes the backups (their BEFORE columns straight from the locked rows), the outbox rows
with their Kafka messages (built from the jsonb text Postgres now holds) and the chunk's outbox batch
(the one row whose `published_at` records the delivery of all its messages, `runner.stores.publisher`). A
chunk Postgres refuses for a value is written again person by person under savepoints. The caller owns
the transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg

from runner.rules.records import AppliedByJob, PersonWrite, PgPerson

# The chunk table a batch connection creates (`runner.stores.connections.connect`): a chunk's changes,
# COPied in, then merged by one statement (_WRITE_SQL).
_CHUNK_TABLE = "recon_apply_chunk"
CHUNK_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS {_CHUNK_TABLE} (
    ord integer NOT NULL,
    id bigint NOT NULL,
    uuid uuid NOT NULL,
    version_read bigint,
    properties jsonb,
    set_map jsonb,
    set_dropped text[],
    set_once_map jsonb,
    set_once_dropped text[],
    updated_at_set jsonb NOT NULL,
    operation_set jsonb NOT NULL,
    metadata_removed text[],
    version_after bigint NOT NULL,
    pending_operations jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""
_CHUNK_COLUMNS = (
    "ord, id, uuid, version_read, properties, set_map, set_dropped, set_once_map, set_once_dropped, "
    "updated_at_set, operation_set, metadata_removed, version_after, pending_operations"
)

# The new properties, merged on jsonb (exact values): whole when the row gives them (restore), else the
# stored ones minus the removed keys, then the SET_ONCE values, then the SET values (ClickHouse's
# texts), each map without the keys the merge decided not to write. Keys the change does not touch are
# never decoded, so they stay exactly as Postgres holds them.
_PROPERTIES_AFTER = (
    "CASE WHEN c.properties IS NOT NULL THEN c.properties ELSE "
    "(CASE WHEN jsonb_typeof(p.properties) = 'object' THEN p.properties ELSE '{}'::jsonb END"
    " - COALESCE(c.metadata_removed, '{}'::text[]))"
    " || (c.set_once_map - COALESCE(c.set_once_dropped, '{}'::text[]))"
    " || (c.set_map - COALESCE(c.set_dropped, '{}'::text[])) END"
)

# R9.7 as a jsonb expression: a NULL (or non-object) map becomes {}, removed keys go, set keys are set.
# Without a list of removed keys (NULL), the given map replaces the stored one whole.
_METADATA_AFTER = (
    "CASE WHEN c.metadata_removed IS NULL THEN c.{delta} ELSE "
    "(CASE WHEN jsonb_typeof(p.{col}) = 'object' THEN p.{col} ELSE '{{}}'::jsonb END - c.metadata_removed)"
    " || c.{delta} END"
)
_UPDATED_AT_AFTER = _METADATA_AFTER.format(col="properties_last_updated_at", delta="updated_at_set")
_OPERATION_AFTER = _METADATA_AFTER.format(col="properties_last_operation", delta="operation_set")

# §2.7's message, as `runner.rules.merge.kafka_message` writes it, from the properties' jsonb text: the
# message carries exactly what Postgres holds. (`%%` is a `%` once psycopg bound the parameters.)
PAYLOAD_SQL = (
    """format('{"id": "%%s", "team_id": %%s, "properties": %%s, "is_identified": %%s, "is_deleted": 0, """
    """"created_at": %%s, "version": %%s}', """
    "chunk.uuid, chunk.team_id, to_json(chunk.properties_after::text), "
    "CASE WHEN chunk.is_identified THEN 1 ELSE 0 END, "
    "to_json(to_char(COALESCE(chunk.created_at, now()) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')), "
    "chunk.version_after)"
)

# What a write statement writes from its `updated` CTE (the rows it changed, with their `payload`):
# the backups, the outbox rows in processing order (`ord`) and the chunk's outbox batch. Shared by the
# per-person write (`_WRITE_SQL`) and the set-based one (`runner.stores.apply_sets`).
WRITTEN_SQL = """backup AS (
    INSERT INTO posthog_person_reconciliation_backup (
        job_id, team_id, person_id, uuid,
        properties, properties_last_updated_at, properties_last_operation, version,
        is_identified, created_at, is_user_id, pending_operations,
        properties_after, properties_last_updated_at_after, properties_last_operation_after, version_after)
    SELECT %(job)s, team_id, id, uuid,
           properties, COALESCE(properties_last_updated_at, 'null'::jsonb),
           COALESCE(properties_last_operation, 'null'::jsonb), version,
           is_identified, created_at, is_user_id, pending_operations,
           properties_after, updated_at_after, operation_after, version_after
    FROM updated
    WHERE %(backup)s
    ON CONFLICT (job_id, team_id, person_id) DO NOTHING
    RETURNING 1
),
batch_id AS MATERIALIZED (
    SELECT nextval('recon_outbox_batch_id_seq') AS id
),
outbox AS (
    INSERT INTO recon_outbox (job_id, team_id, person_uuid, version, payload, batch_id)
    SELECT %(job)s, %(team)s, uuid, version_after, payload, (SELECT id FROM batch_id)
    FROM updated ORDER BY ord
    RETURNING id, person_uuid, payload
),
batch AS (
    INSERT INTO recon_outbox_batch (id, job_id, team_id, first_id, last_id, messages)
    SELECT (SELECT id FROM batch_id), %(job)s, %(team)s, min(id), max(id), count(*) FROM outbox
    HAVING count(*) > 0
    RETURNING id, first_id, last_id, messages
)"""

# One statement per chunk. Every part reads the rows as they were before it (one snapshot), so the
# backup's BEFORE columns are the locked rows'. The update only takes rows still at the version read
# (a row changed since, by a writer ignoring row locks or a trigger, is left alone and reported back);
# backups and outbox rows are written for the rows it really changed, with what it wrote. The outbox
# rows get ids in processing order and the id of the chunk's outbox batch, whose row records their id
# range (the publisher reads a batch back by that range when it did not keep the messages).
_WRITE_SQL = f"""
WITH chunk AS MATERIALIZED (
    SELECT c.ord, c.id, c.uuid, c.version_read, c.version_after, c.pending_operations,
           {_PROPERTIES_AFTER} AS properties_after,
           {_UPDATED_AT_AFTER} AS updated_at_after,
           {_OPERATION_AFTER} AS operation_after,
           p.team_id, p.properties, p.properties_last_updated_at, p.properties_last_operation, p.version,
           p.is_identified, p.created_at, p.is_user_id
    FROM {_CHUNK_TABLE} c
    JOIN posthog_person p ON p.team_id = %(team)s AND p.id = c.id
),
updated AS (
    UPDATE posthog_person p
    SET properties = chunk.properties_after,
        properties_last_updated_at = chunk.updated_at_after,
        properties_last_operation = chunk.operation_after,
        version = chunk.version_after
    FROM chunk
    WHERE p.team_id = %(team)s AND p.id = chunk.id AND p.version IS NOT DISTINCT FROM chunk.version_read
    RETURNING chunk.*, {PAYLOAD_SQL} AS payload
),
{WRITTEN_SQL}
SELECT (SELECT count(*) FROM backup), (SELECT count(*) FROM updated),
       (SELECT id FROM batch), (SELECT first_id FROM batch), (SELECT last_id FROM batch),
       (SELECT messages FROM batch),
       (SELECT array_agg(uuid::text) FROM chunk WHERE id NOT IN (SELECT id FROM updated)),
       CASE WHEN %(keep)s THEN (SELECT array_agg(person_uuid::text ORDER BY id) FROM outbox) END,
       CASE WHEN %(keep)s THEN (SELECT array_agg(payload ORDER BY id) FROM outbox) END
"""

_PERSON_COLUMNS = (
    "id, uuid, properties, version, is_identified, "
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
)
_METADATA_COLUMNS = ", properties_last_updated_at, properties_last_operation"


@dataclass(slots=True)
class OutboxBatch:
    """The outbox rows of one written chunk: published together, marked published together (one row of
    `recon_outbox_batch`). `messages` are (key, payload) in id order, or None when the caller did not
    keep them: the publisher then reads them back from the outbox by id range."""

    batch_id: int
    job_id: str
    team_id: int
    first_id: int
    last_id: int
    size: int
    messages: list[tuple[str, str]] | None = None


@dataclass(slots=True)
class ChunkWritten:
    """What a chunk's write did: counts, its outbox batches (one, or one per person when the chunk had
    to be written person by person), the persons whose row had changed since it was read (`lost`: not
    written, to retry) and those Postgres refused (`invalid`: person -> reason, not written)."""

    updated: int = 0
    backups: int = 0
    outbox: list[OutboxBatch] = field(default_factory=list)
    lost: list[UUID] = field(default_factory=list)
    invalid: dict[UUID, str] = field(default_factory=dict)


def _uuid_array(uuids: Sequence[UUID]) -> str:
    """A uuid[] literal: much cheaper to send than letting the driver adapt a list of UUID objects."""
    return "{" + ",".join(map(str, uuids)) + "}"


def _row_to_person(row: Sequence[Any]) -> PgPerson:
    pid, uuid, props, version, identified, created_at, *metadata = row
    updated, operation = metadata or (None, None)
    return PgPerson(
        int(pid),
        uuid,
        props if isinstance(props, dict) else {},
        None if version is None else int(version),
        bool(identified),
        created_at,
        updated if isinstance(updated, dict) else None,
        operation if isinstance(operation, dict) else None,
    )


def lock_persons(
    conn: psycopg.Connection,
    team_id: int,
    uuids: Sequence[UUID],
    *,
    lock: bool = True,
    with_metadata: bool = True,
) -> dict[UUID, PgPerson]:
    """Read and lock the persons' rows. Rows another transaction holds are skipped (not waited for):
    the caller retries them and finally reports version_conflict. `lock=False` reads only (dry run).
    Apply passes `with_metadata=False`: it changes the metadata maps in SQL, never reading them."""
    if not uuids:
        return {}
    suffix = " FOR UPDATE SKIP LOCKED" if lock else ""
    columns = _PERSON_COLUMNS + (_METADATA_COLUMNS if with_metadata else "")
    rows = conn.execute(
        f"SELECT {columns} FROM posthog_person "
        f"WHERE team_id = %s AND uuid = ANY(%s::uuid[]) ORDER BY id{suffix}",
        (team_id, _uuid_array(uuids)),
    ).fetchall()
    return {person.uuid: person for person in map(_row_to_person, rows)}


HELD = "held"


def lock_waiting(conn: psycopg.Connection, team_id: int, uuid: UUID, *, wait: bool) -> PgPerson | str | None:
    """Lock one person's row, waiting for another transaction that holds it (bounded by the session's
    lock_timeout; `wait=False`: not at all). Once the lock is granted the row is read as that
    transaction left it. Returns the row, HELD when the wait timed out, or None when there is no row."""
    suffix = " FOR UPDATE" if wait else " FOR UPDATE NOWAIT"
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT recon_lock")
        try:
            row = cur.execute(
                f"SELECT {_PERSON_COLUMNS} FROM posthog_person WHERE team_id = %s AND uuid = %s{suffix}",
                (team_id, uuid),
            ).fetchone()
        except psycopg.errors.LockNotAvailable:
            cur.execute("ROLLBACK TO SAVEPOINT recon_lock")
            return HELD
        cur.execute("RELEASE SAVEPOINT recon_lock")
    return None if row is None else _row_to_person(row)


def existing_uuids(conn: psycopg.Connection, team_id: int, uuids: Sequence[UUID]) -> set[UUID]:
    """Which of these persons exist at all (a plain read sees rows others have locked)."""
    if not uuids:
        return set()
    rows = conn.execute(
        "SELECT uuid FROM posthog_person WHERE team_id = %s AND uuid = ANY(%s::uuid[])",
        (team_id, _uuid_array(uuids)),
    ).fetchall()
    return {row[0] for row in rows}


def applied_by_job(
    conn: psycopg.Connection, job_id: str, team_id: int, uuids: Sequence[UUID]
) -> dict[UUID, AppliedByJob]:
    """Persons of this chunk that this job already updated: the outbox row is written in the same
    transaction as the update, so it exists exactly when the update was committed."""
    if not uuids:
        return {}
    rows = conn.execute(
        "SELECT DISTINCT ON (person_uuid) person_uuid, version, payload FROM recon_outbox "
        "WHERE job_id = %s AND team_id = %s AND person_uuid = ANY(%s::uuid[]) "
        "ORDER BY person_uuid, version DESC",
        (job_id, team_id, _uuid_array(uuids)),
    ).fetchall()
    return {row[0]: AppliedByJob(int(row[1]), row[2]) for row in rows}


def text_array(items: list[str] | None) -> str | None:
    """A Postgres text[] literal (COPY then reads it as the column's type; cheaper than the adapter)."""
    if items is None:
        return None
    quoted = ('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"


def copy_text(value: str) -> str:
    """A text value in COPY's text format (backslash, newline, carriage return and tab escaped)."""
    if "\\" in value:
        value = value.replace("\\", "\\\\")
    if "\n" in value or "\r" in value or "\t" in value:
        value = value.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return value


_COPY_ROWS_PER_WRITE = 1000
_COPY_NULL = "\\N"


def _copy_lines(writes: Sequence[PersonWrite]) -> Iterator[str]:
    """The chunk table's rows in COPY text format, a block of lines at a time: built here rather than
    by the driver's per-value adapters, which cost more than the whole rest of a person's write."""
    lines: list[str] = []
    for ord_, w in enumerate(writes):
        person = w.person
        updated_at, operation, removed = w.metadata_columns()
        removed_text = text_array(removed)
        properties = _COPY_NULL if w.properties_json is None else copy_text(w.properties_json)
        lines.append(
            f"{ord_}\t{person.id}\t{person.uuid}\t"
            f"{_COPY_NULL if person.version is None else person.version}\t{properties}\t"
            f"{copy_text(w.set_json)}\t{_copy_array(w.set_dropped)}\t"
            f"{copy_text(w.set_once_json)}\t{_copy_array(w.set_once_dropped)}\t"
            f"{copy_text(updated_at)}\t{copy_text(operation)}\t"
            f"{_COPY_NULL if removed_text is None else copy_text(removed_text)}\t{w.version_after}\t"
            f"{copy_text(w.pending_operations_json)}\n"
        )
        if len(lines) == _COPY_ROWS_PER_WRITE:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def _copy_array(items: list[str]) -> str:
    return _COPY_NULL if not items else copy_text(text_array(items) or "{}")


# Errors of a chunk's write that one person's values can cause (Postgres cannot store a value: a NUL
# character, an invalid escape, a too large row): the chunk is then written person by person.
PERSON_ERRORS = (
    psycopg.errors.DataError,
    psycopg.errors.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
)


def write_chunk(
    conn: psycopg.Connection,
    job_id: str,
    team_id: int,
    writes: Sequence[PersonWrite],
    *,
    backup: bool,
    keep_messages: bool = True,
) -> ChunkWritten:
    """Backups, updates and outbox rows of a chunk of locked persons, in the caller's transaction.

    One set-based statement; should Postgres refuse it for a value, the chunk is written again person by
    person, each under a savepoint, so only the persons it refuses fail (`invalid`). Returns the counts,
    the chunk's outbox batches (with their messages unless `keep_messages` is False), and the persons
    not written."""
    if not writes:
        return ChunkWritten()
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT recon_chunk")
        try:
            written = _write_set(cur, job_id, team_id, writes, backup, keep_messages)
        except PERSON_ERRORS as exc:
            cur.execute("ROLLBACK TO SAVEPOINT recon_chunk")
            if len(writes) == 1:
                return ChunkWritten(invalid={writes[0].person.uuid: _reason(exc)})
            written = ChunkWritten()
            for w in writes:
                cur.execute("SAVEPOINT recon_person")
                try:
                    one = _write_set(cur, job_id, team_id, [w], backup, keep_messages)
                except PERSON_ERRORS as person_exc:
                    cur.execute("ROLLBACK TO SAVEPOINT recon_person")
                    written.invalid[w.person.uuid] = _reason(person_exc)
                    continue
                cur.execute("RELEASE SAVEPOINT recon_person")
                written.updated += one.updated
                written.backups += one.backups
                written.outbox += one.outbox
                written.lost += one.lost
        cur.execute("RELEASE SAVEPOINT recon_chunk")
    return written


def _reason(exc: Exception) -> str:
    return f"Postgres refused the value: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _write_set(
    cur: psycopg.Cursor[Any],
    job_id: str,
    team_id: int,
    writes: Sequence[PersonWrite],
    backup: bool,
    keep_messages: bool,
) -> ChunkWritten:
    # One primary-key lookup per chunk row: the planner knows nothing of the temporary table and would
    # rather hash the whole team's rows, a scan of the team for every chunk. Both settings last until
    # the transaction ends; only single-table reads and chunk writes follow them.
    cur.execute(
        f"DELETE FROM {_CHUNK_TABLE}; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
    )
    with cur.copy(f"COPY {_CHUNK_TABLE} ({_CHUNK_COLUMNS}) FROM STDIN") as copy:
        for block in _copy_lines(writes):
            copy.write(block)
    cur.execute(_WRITE_SQL, {"job": job_id, "team": team_id, "backup": backup, "keep": keep_messages})
    row = cur.fetchone()
    assert row is not None
    backups, updated, batch_id, first_id, last_id, size, lost, keys, payloads = row
    outbox = []
    if batch_id is not None:
        messages = list(zip(keys, payloads, strict=True)) if keep_messages else None
        outbox.append(
            OutboxBatch(int(batch_id), job_id, team_id, int(first_id), int(last_id), int(size), messages)
        )
    return ChunkWritten(int(updated), int(backups), outbox, [UUID(u) for u in lost or ()])


# --- the job's own history, the metadata maps ----------------------------------------------------------


def job_touched_team(conn: psycopg.Connection, job_id: str, team_id: int) -> bool:
    """Whether an earlier attempt of this job wrote persons of this team (else no lookups needed)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM recon_outbox WHERE job_id = %s AND team_id = %s)", (job_id, team_id)
    ).fetchone()
    return bool(row and row[0])


def person_metadata(conn: psycopg.Connection, team_id: int, ids: Sequence[int]) -> dict[int, tuple[Any, Any]]:
    """The metadata maps (properties_last_updated_at, properties_last_operation) of rows this
    transaction just locked (or, in a dry run, read), by person pk."""
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT id, properties_last_updated_at, properties_last_operation FROM posthog_person "
        "WHERE team_id = %s AND id = ANY(%s)",
        (team_id, list(ids)),
    ).fetchall()
    return {int(pid): (updated, operation) for pid, updated, operation in rows}
