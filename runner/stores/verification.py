"""The reads `runner verify` needs per page of a job's persons: the job's outbox rows and backup rows and
the persons' versions in Postgres, their latest state in ClickHouse and their entries in the diff table.
Reads only; the classification is `runner.rules.verify`, the job `runner.jobs.verify`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg

from runner.stores.diffs import DIFF_TABLE
from runner.stores.warehouse import ident

PAGE = 10_000

Key = tuple[int, UUID]  # (team id, person uuid)


def job_of(conn: psycopg.Connection, job_id: str) -> tuple[str, str] | None:
    """(kind, status) of a job in the run ledger, None when the ledger has no such job."""
    row = conn.execute("SELECT kind, status FROM recon_run WHERE job_id = %s", (job_id,)).fetchone()
    return None if row is None else (row[0], row[1])


def job_pages(conn: psycopg.Connection, job_id: str, page: int = PAGE) -> Iterator[list[Any]]:
    """The job's outbox rows `(id, team_id, person_uuid, version)` in pages, by id."""
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, team_id, person_uuid, version FROM recon_outbox WHERE job_id = %s AND id > %s "
            "ORDER BY id LIMIT %s",
            (job_id, last, page),
        ).fetchall()
        if rows:
            yield rows
            last = rows[-1][0]
        if len(rows) < page:
            return


_PAIRS = """(team_id, {id_column}) IN (
            SELECT tupleElement(pair, 1), tupleElement(pair, 2)
            FROM (SELECT arrayJoin(arrayZip({{teams:Array(Int64)}}, {{ids:Array(UUID)}})) AS pair))"""


def clickhouse_state(client: Any, source_db: str, teams: list[int], ids: list[UUID]) -> dict[Key, tuple]:
    """R2.2 per person: (version, is_deleted, properties) of the highest version."""
    rows = client.query(
        f"""
        SELECT team_id, id, max(version), argMax(is_deleted, version), argMax(properties, version)
        FROM {ident(source_db)}.person
        WHERE {_PAIRS.format(id_column="id")}
        GROUP BY team_id, id
        """,
        parameters={"teams": teams, "ids": ids},
    ).result_rows
    return {(int(t), UUID(str(i))): (int(v), int(d), p) for t, i, v, d, p in rows}


def diff_entries(client: Any, schema: str, teams: list[int], ids: list[UUID]) -> dict[Key, dict]:
    """The persons' entries in the diff table (persons it does not list are left out)."""
    rows = client.query(
        f"""
        SELECT team_id, person_id, baseline_version, set_keys, set_values, set_once_keys, unset_keys
        FROM {ident(schema)}.{ident(DIFF_TABLE)}
        WHERE {_PAIRS.format(id_column="person_id")}
        """,
        parameters={"teams": teams, "ids": ids},
    ).result_rows
    return {
        (int(t), UUID(str(i))): {
            "baseline_version": int(b),
            "set": dict(zip(s, v, strict=True)),
            "set_once": list(o),
            "unset": list(u),
        }
        for t, i, b, s, v, o, u in rows
    }


def postgres_versions(conn: psycopg.Connection, teams: list[int], ids: list[UUID]) -> dict[Key, int]:
    rows = conn.execute(
        "SELECT p.team_id, p.uuid, coalesce(p.version, 0) FROM posthog_person p "
        "JOIN unnest(%s::int[], %s::uuid[]) AS w(team_id, uuid) ON p.team_id = w.team_id AND p.uuid = w.uuid",
        (teams, ids),
    ).fetchall()
    return {(int(t), u): int(v) for t, u, v in rows}


def job_operations(conn: psycopg.Connection, job_id: str, keys: list[Key]) -> dict[Key, dict[str, set[str]]]:
    """Keys the job's diff touched per person, with their operations (its backup rows' pending_operations)."""
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT b.team_id, b.uuid, b.pending_operations FROM posthog_person_reconciliation_backup b "
        "JOIN unnest(%s::int[], %s::uuid[]) AS w(team_id, uuid) ON b.team_id = w.team_id AND b.uuid = w.uuid "
        "WHERE b.job_id = %s",
        ([t for t, _ in keys], [u for _, u in keys], job_id),
    ).fetchall()
    by_person: dict[Key, dict[str, set[str]]] = {}
    for t, u, ops in rows:
        operations = by_person.setdefault((int(t), u), {})
        for op in ops:
            if isinstance(op, dict):
                operations.setdefault(op["key"], set()).add(op.get("operation", ""))
    return by_person
