"""The run ledger read back for `runner report`: every team result of the apply jobs in scope, and the
scheduled range chunks whose dbt build failed before their teams were known (`recon_run_team`,
`recon_run`, `recon_schedule_chunk`). Reads only.

A team result carries two statuses: the ledger's own (`running`, `succeeded`, `failed`, `incomplete`)
and the report's (`succeeded`, `failed`, `unfinished`): an `incomplete` team (some persons not applied)
is reported `failed`, with the ledger's error naming them, so that a re-run of the failed teams
retries it; a team whose attempt never finished (still running, or killed) is `unfinished`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

from runner.rules.statuses import FAILED, INCOMPLETE, SUCCEEDED

UNFINISHED = "unfinished"
STATUSES = (SUCCEEDED, FAILED, UNFINISHED)  # the report's statuses: every team has one of these


@dataclass(frozen=True)
class TeamResult:
    team_id: int
    status: str  # the report's: one of STATUSES
    error: str | None
    run_id: str
    step_key: str | None
    persons_processed: int
    persons_updated: int
    persons_skipped: int
    started_at: datetime
    finished_at: datetime | None
    ledger_status: str = ""  # the ledger's own word (`incomplete` is reported `failed`)

    def csv_row(self) -> list[Any]:
        return [
            self.team_id,
            self.status,
            self.error or "",
            self.run_id,
            self.step_key or "",
            self.persons_processed,
            self.persons_updated,
            self.persons_skipped,
        ]

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["started_at"] = self.started_at.isoformat()
        record["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return record


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    job_ids: tuple[str, ...] = ()
    schedule_id: str | None = None

    def describe(self) -> str:
        parts = []
        if self.since:
            parts.append(f"since {self.since:%Y-%m-%d %H:%M:%S}")
        if self.until:
            parts.append(f"until {self.until:%Y-%m-%d %H:%M:%S}")
        if self.job_ids:
            parts.append(f"jobs {', '.join(self.job_ids)}")
        if self.schedule_id:
            parts.append(f"schedule {self.schedule_id}")
        return ", ".join(parts) or "all runs"


def report_status(ledger_status: str) -> str:
    """The report's status of a ledger status."""
    if ledger_status == INCOMPLETE:
        return FAILED
    return ledger_status if ledger_status in (SUCCEEDED, FAILED) else UNFINISHED


def _job_filter(filters: Filters, column: str) -> tuple[str, dict[str, Any]]:
    clauses = []
    params: dict[str, Any] = {}
    if filters.job_ids:
        clauses.append(f"{column} = ANY(%(job_ids)s)")
        params["job_ids"] = list(filters.job_ids)
    if filters.schedule_id:
        clauses.append(f"starts_with({column}, %(schedule_prefix)s)")
        params["schedule_prefix"] = filters.schedule_id + "-"
    return " AND ".join(clauses) or "true", params


def read_results(conn: psycopg.Connection, filters: Filters) -> list[TeamResult]:
    """Every team result of apply jobs in scope, newest attempt first within each team."""
    job_clause, params = _job_filter(filters, "t.job_id")
    params.update(since=filters.since, until=filters.until)
    rows = conn.execute(
        f"""
        SELECT t.team_id, t.status, t.error, t.job_id, t.chunk_id, t.processed, t.updated, t.skipped,
               t.started_at, t.finished_at
        FROM recon_run_team AS t
        JOIN recon_run AS r ON r.job_id = t.job_id
        WHERE r.kind = 'apply'
          AND (%(since)s::timestamptz IS NULL OR t.started_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR t.started_at < %(until)s)
          AND {job_clause}
        ORDER BY t.team_id, t.started_at DESC, t.job_id DESC
        """,
        params,
    ).fetchall()
    return [
        TeamResult(
            team_id=int(r[0]),
            status=report_status(r[1]),
            error=r[2],
            run_id=r[3],
            step_key=r[4],
            persons_processed=int(r[5]),
            persons_updated=int(r[6]),
            persons_skipped=int(r[7]),
            started_at=r[8],
            finished_at=r[9],
            ledger_status=r[1],
        )
        for r in rows
    ]


def unbuilt_chunks(conn: psycopg.Connection, filters: Filters) -> list[dict[str, Any]]:
    """Scheduled range chunks whose latest attempt failed in dbt: their teams are not in the ledger."""
    exists = conn.execute("SELECT to_regclass('recon_schedule_chunk')").fetchone()
    if not exists or exists[0] is None:
        return []
    job_clause, params = _job_filter(filters, "job_id")
    params.update(since=filters.since, until=filters.until)
    rows = conn.execute(
        f"""
        SELECT job_id, schedule_id, min_team_id, max_team_id, error, finished_at
        FROM recon_schedule_chunk
        WHERE status = 'build_failed' AND team_ids IS NULL
          AND (%(since)s::timestamptz IS NULL OR finished_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR finished_at < %(until)s)
          AND {job_clause}
        ORDER BY job_id
        """,
        params,
    ).fetchall()
    return [
        {
            "job_id": r[0],
            "schedule_id": r[1],
            "min_team_id": r[2],
            "max_team_id": r[3],
            "error": r[4],
            "finished_at": r[5].isoformat(),
        }
        for r in rows
    ]
