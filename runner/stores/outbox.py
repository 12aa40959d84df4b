"""The outbox's states and the SQL that moves messages between them (publishing itself is in
`runner.stores.publisher`; the commands are in `runner.commands.outbox`).

Every outbox row is in one of four states, shown by the `status` column of `recon_outbox_status`:
- `pending`: not confirmed by Kafka yet; the next apply or restore publishes it before new work (a
  crash, a broker outage, a timeout: transient failures keep a message here);
- `published`: Kafka confirmed it (its own `published_at`, or its outbox batch's);
- `quarantined`: Kafka or the client rejected it for good (`runner.stores.publisher.PERMANENT_ERRORS`, e.g.
  a message over the size limit); it is set aside with its error so that it never blocks later runs,
  and waits for `runner outbox retry` or `runner outbox discard`;
- `discarded`: set aside for good by an operator (`runner outbox discard`), with when and why. The row
  is kept: nothing is ever deleted.

A quarantined message's person is committed in Postgres, so apply and restore count it as updated; they
exit 1 while their job has quarantined messages (`job_quarantined`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

log = logging.getLogger("runner.outbox")

PENDING = "pending"
PUBLISHED = "published"
QUARANTINED = "quarantined"
DISCARDED = "discarded"
STATUSES = (PENDING, PUBLISHED, QUARANTINED, DISCARDED)
OPEN_STATUSES = (QUARANTINED, PENDING)  # what still has to reach Kafka, or be discarded


@dataclass(frozen=True)
class Quarantine:
    """A message rejected for good: its row by id (rows without a batch, retries), or by its batch and
    person (a batch's kept messages carry no row ids; a person appears once per batch)."""

    error: str
    row_id: int | None = None
    batch_id: int | None = None
    person_uuid: str | None = None
    job_id: str | None = None  # with team_id: finds the row through the (job, team, person) index
    team_id: int | None = None


def quarantine(conn: psycopg.Connection, rejected: Sequence[Quarantine]) -> None:
    """Move rejected messages to `quarantined` with their error (a quarantined one gets the new error)."""
    for item in rejected:
        params: tuple[object, ...]
        if item.row_id is not None:
            where, params = "id = %s", (item.row_id,)
        elif item.job_id is not None:
            where = "job_id = %s AND team_id = %s AND person_uuid = %s AND batch_id = %s"
            params = (item.job_id, item.team_id, item.person_uuid, item.batch_id)
        else:
            where, params = "batch_id = %s AND person_uuid = %s", (item.batch_id, item.person_uuid)
        rows = conn.execute(
            "UPDATE recon_outbox SET quarantined_at = clock_timestamp(), error = %s "
            f"WHERE {where} AND discarded_at IS NULL RETURNING id, job_id, person_uuid",
            (item.error, *params),
        ).fetchall()
        for outbox_id, job_id, person in rows:
            log.warning(
                "Outbox message %d (job %s, person %s) quarantined: Kafka rejected it for good: %s",
                outbox_id,
                job_id,
                person,
                item.error,
            )


def mark_rows_published(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    """Mark rows published one by one (rows without a batch, retried rows): a quarantined row that got
    through leaves the quarantine; its last error stays on the row as history."""
    conn.execute(
        "UPDATE recon_outbox SET published_at = now(), quarantined_at = NULL "
        "WHERE id = ANY(%s) AND discarded_at IS NULL",
        (list(ids),),
    )


def quarantine_note(job_id: str, count: int) -> str:
    """The line apply and restore print (and log) while their job has quarantined messages."""
    if count == 1:
        what = f"1 message of job {job_id} is quarantined: Kafka rejected it for good (its person is"
    else:
        what = (
            f"{count} messages of job {job_id} are quarantined: Kafka rejected them for good "
            "(their persons are"
        )
    return f"{what} committed in Postgres); see `runner outbox list --job-id {job_id}`, then retry or discard"


def job_quarantined(conn: psycopg.Connection, job_id: str) -> int:
    """How many messages of a job are quarantined; logs a warning naming the command to see them."""
    count = jobs_quarantined(conn, [job_id]).get(job_id, 0)
    if count:
        log.warning("%s", quarantine_note(job_id, count))
    return count


def jobs_quarantined(conn: psycopg.Connection, job_ids: Sequence[str]) -> dict[str, int]:
    """{job id: quarantined messages} of these jobs, jobs without any left out (`runner report`)."""
    if not job_ids:
        return {}
    rows = conn.execute(
        "SELECT job_id, count(*) FROM recon_outbox WHERE job_id = ANY(%s) AND quarantined_at IS NOT NULL "
        "AND discarded_at IS NULL GROUP BY job_id ORDER BY job_id",
        (list(job_ids),),
    ).fetchall()
    return {str(job): int(count) for job, count in rows}


def schedule_quarantined(conn: psycopg.Connection, schedule_id: str) -> int:
    """How many messages of a schedule's chunks (every invocation's) are quarantined."""
    row = conn.execute(
        "SELECT count(*) FROM recon_outbox WHERE job_id IN "
        "(SELECT job_id FROM recon_schedule_chunk WHERE schedule_id = %s) "
        "AND quarantined_at IS NOT NULL AND discarded_at IS NULL",
        (schedule_id,),
    ).fetchone()
    return int(row[0]) if row else 0


# --- selection (runner outbox) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which messages a `runner outbox` command works on: by ids, by job, or all; in the given states."""

    statuses: tuple[str, ...]
    ids: tuple[int, ...] = ()
    job_id: str | None = None
    team_id: int | None = None

    def where(self) -> tuple[sql.Composable, list[object]]:
        clauses: list[sql.Composable] = [sql.SQL("status = ANY(%s)")]
        params: list[object] = [list(self.statuses)]
        if self.ids:
            clauses.append(sql.SQL("id = ANY(%s)"))
            params.append(list(self.ids))
        if self.job_id is not None:
            clauses.append(sql.SQL("job_id = %s"))
            params.append(self.job_id)
        if self.team_id is not None:
            clauses.append(sql.SQL("team_id = %s"))
            params.append(self.team_id)
        return sql.SQL(" AND ").join(clauses), params


@dataclass(frozen=True)
class Message:
    id: int
    job_id: str
    team_id: int
    person_uuid: str
    version: int
    bytes: int
    status: str
    created_at: datetime
    quarantined_at: datetime | None
    error: str | None
    discarded_at: datetime | None
    discard_reason: str | None

    @property
    def since(self) -> datetime:
        """When it entered its state (pending ones: when written)."""
        return self.discarded_at or self.quarantined_at or self.created_at


def counts(conn: psycopg.Connection, selection: Selection) -> dict[str, int]:
    """Messages per selected state (every selected state present, zeros included)."""
    where, params = selection.where()
    found: dict[str, int] = dict(
        conn.execute(
            sql.SQL("SELECT status, count(*) FROM recon_outbox_status WHERE {} GROUP BY status").format(
                where
            ),
            params,
        ).fetchall()
    )
    return {status: int(found.get(status, 0)) for status in selection.statuses}


def list_messages(conn: psycopg.Connection, selection: Selection, limit: int | None) -> list[Message]:
    """The selected messages in id order (at most `limit`), without their payloads."""
    where, params = selection.where()
    query = sql.SQL(
        "SELECT id, job_id, team_id, person_uuid::text, version, octet_length(payload), status, created_at, "
        "quarantined_at, error, discarded_at, discard_reason FROM recon_outbox_status WHERE {} ORDER BY id"
    ).format(where)
    if limit is not None:
        query = sql.SQL("{} LIMIT {}").format(query, sql.Literal(limit))
    return [Message(*row) for row in conn.execute(query, params).fetchall()]


def missing_ids(conn: psycopg.Connection, selection: Selection) -> list[int]:
    """Ids the selection names that are not in it (unknown, or in another state)."""
    if not selection.ids:
        return []
    where, params = selection.where()
    found = {
        row[0]
        for row in conn.execute(sql.SQL("SELECT id FROM recon_outbox_status WHERE {}").format(where), params)
    }
    return sorted(set(selection.ids) - found)


def pages(
    conn: psycopg.Connection, selection: Selection, page_size: int
) -> Iterator[list[tuple[int, int, str, str]]]:
    """The selected messages with their payloads, (id, team_id, person uuid, payload), in id order and
    pages; the selection is taken once, so messages that change state meanwhile are still retried."""
    where, params = selection.where()
    ids = [
        row[0]
        for row in conn.execute(
            sql.SQL("SELECT id FROM recon_outbox_status WHERE {} ORDER BY id").format(where), params
        )
    ]
    for start in range(0, len(ids), page_size):
        chunk = ids[start : start + page_size]
        rows = conn.execute(
            "SELECT id, team_id, person_uuid::text, payload FROM recon_outbox WHERE id = ANY(%s) ORDER BY id",
            (chunk,),
        ).fetchall()
        yield [(int(i), int(t), str(k), str(p)) for i, t, k, p in rows]


def discard(conn: psycopg.Connection, selection: Selection, reason: str | None) -> list[int]:
    """Set the selected messages aside for good (kept, with when and why). Returns their ids."""
    where, params = selection.where()
    rows = conn.execute(
        sql.SQL(
            "UPDATE recon_outbox SET discarded_at = now(), discard_reason = %s "
            "WHERE id IN (SELECT id FROM recon_outbox_status WHERE {}) AND discarded_at IS NULL RETURNING id"
        ).format(where),
        [reason, *params],
    ).fetchall()
    return sorted(int(row[0]) for row in rows)
