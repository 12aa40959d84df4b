"""The backup table (`posthog_person_reconciliation_backup`) as restore reads it: which jobs have backup
rows, the rows of one job narrowed to teams, person pks and uuids (`BackupSelection`), their counts per
team, and the team's rows in keyset pages. Apply and restore write backup rows in their chunk writes
(`runner.stores.persons.write_chunk`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg

BACKUP_TABLE = "posthog_person_reconciliation_backup"
_BACKUP_COLUMNS = (
    "person_id, uuid, properties, properties_last_updated_at, properties_last_operation, "
    "properties_after, properties_last_updated_at_after, properties_last_operation_after"
)


@dataclass(frozen=True)
class BackupSelection:
    """The backup rows of one job, optionally narrowed to teams, person pks and uuids."""

    job_id: str
    team_ids: Sequence[int] = ()
    person_ids: Sequence[int] = ()
    person_uuids: Sequence[UUID] = ()

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses = ["job_id = %(job)s"]
        params: dict[str, Any] = {"job": self.job_id}
        if self.team_ids:
            clauses.append("team_id = ANY(%(teams)s)")
            params["teams"] = list(self.team_ids)
        if self.person_ids:
            clauses.append("person_id = ANY(%(pks)s)")
            params["pks"] = list(self.person_ids)
        if self.person_uuids:
            clauses.append("uuid = ANY(%(uuids)s)")
            params["uuids"] = list(self.person_uuids)
        return " AND ".join(clauses), params


def job_has_backups(conn: psycopg.Connection, job_id: str) -> bool:
    return (
        conn.execute(f"SELECT 1 FROM {BACKUP_TABLE} WHERE job_id = %s LIMIT 1", (job_id,)).fetchone()
        is not None
    )


def backup_counts(conn: psycopg.Connection, selection: BackupSelection) -> list[tuple[int, int]]:
    """(team id, selected backup rows) per team, ascending."""
    where, params = selection.where()
    return [
        (int(team), int(n))
        for team, n in conn.execute(
            f"SELECT team_id, count(*) FROM {BACKUP_TABLE} WHERE {where} GROUP BY team_id ORDER BY team_id",
            params,
        )
    ]


def backup_values(conn: psycopg.Connection, selection: BackupSelection, column: str) -> set[Any]:
    """The distinct person pks (`person_id`) or uuids (`uuid`) of the selected backup rows."""
    if column not in ("person_id", "uuid"):
        raise ValueError(f"not a backup selection column: {column!r}")
    where, params = selection.where()
    return {
        row[0] for row in conn.execute(f"SELECT DISTINCT {column} FROM {BACKUP_TABLE} WHERE {where}", params)
    }


def backup_pages(
    conn: psycopg.Connection, selection: BackupSelection, team_id: int, page_size: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The team's selected backup rows (`person_id, uuid`, the before maps, the after maps) in keyset
    pages of `page_size`, ordered by person pk (on a connection of its own: `connect_reader`)."""
    where, params = selection.where()
    params = {**params, "team": team_id, "n": page_size}
    after: int | None = None
    while True:
        keyset = "" if after is None else "AND (team_id, person_id) > (%(team)s, %(after)s)"
        rows = conn.execute(
            f"SELECT {_BACKUP_COLUMNS} FROM {BACKUP_TABLE} WHERE {where} AND team_id = %(team)s {keyset} "
            "ORDER BY team_id, person_id LIMIT %(n)s",
            {**params, "after": after},
        ).fetchall()
        if rows:
            yield [tuple(row) for row in rows]
        if len(rows) < page_size:
            return
        after = int(rows[-1][0])
