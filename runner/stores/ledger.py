"""The run ledger: what each `runner apply` job did, per team (Postgres tables `recon_run`, `recon_run_team`).

Written on its own autocommit connection, so the ledger survives a team's rolled-back batch. Re-running
a job id updates the same rows: a team's row always describes that team's latest attempt, with counts
for the whole job (persons the job applied in an earlier attempt count as updated again, see
`runner.jobs.apply`). A dry run writes no ledger rows.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from runner.config.settings import ConfigError
from runner.rules.statuses import (  # noqa: E402  (re-exported: the ledger's status words)
    FAILED,
    FAILURES_KEPT,
    INCOMPLETE,
    RUNNING,
    SUCCEEDED,
    failures_text,
)

__all__ = ["FAILED", "FAILURES_KEPT", "INCOMPLETE", "RUNNING", "SUCCEEDED", "failures_text"]


def start_run(conn: psycopg.Connection, job_id: str, kind: str, config: dict[str, Any]) -> None:
    row = conn.execute("SELECT kind FROM recon_run WHERE job_id = %s", (job_id,)).fetchone()
    if row is not None and row[0] != kind:
        raise ConfigError(
            f"job id {job_id!r} already belongs to {'an' if row[0] == 'apply' else 'a'} {row[0]} run; "
            "choose another job id"
        )
    conn.execute(
        """
        INSERT INTO recon_run (job_id, kind, config, dry_run, status)
        VALUES (%s, %s, %s, false, %s)
        ON CONFLICT (job_id) DO UPDATE
        SET config = EXCLUDED.config, status = EXCLUDED.status, finished_at = NULL
        """,
        (job_id, kind, json.dumps(config), RUNNING),
    )


def run_of(conn: psycopg.Connection, job_id: str) -> tuple[str, str | None] | None:
    """(kind, source job id) of a run in the ledger (the source: what a restore run restores), or None."""
    row = conn.execute(
        "SELECT kind, config->>'source_job_id' FROM recon_run WHERE job_id = %s", (job_id,)
    ).fetchone()
    return None if row is None else (row[0], row[1])


def finish_run(conn: psycopg.Connection, job_id: str, status: str) -> None:
    conn.execute("UPDATE recon_run SET status = %s, finished_at = now() WHERE job_id = %s", (status, job_id))


def start_team(conn: psycopg.Connection, job_id: str, team_id: int, chunk_id: str) -> None:
    conn.execute(
        """
        INSERT INTO recon_run_team (job_id, team_id, status, chunk_id)
        VALUES (%s, %s, %s, %s)
        ON CONFLICT (job_id, team_id) DO UPDATE
        SET status = EXCLUDED.status, chunk_id = EXCLUDED.chunk_id, error = NULL,
            processed = 0, updated = 0, skipped = 0, outcomes = '{}'::jsonb, commits = 0,
            started_at = now(), finished_at = NULL, duration_seconds = NULL
        """,
        (job_id, team_id, RUNNING, chunk_id),
    )


def finish_team(
    conn: psycopg.Connection,
    job_id: str,
    team_id: int,
    *,
    status: str,
    error: str | None,
    processed: int,
    updated: int,
    skipped: int,
    outcomes: dict[str, Any],
    commits: int,
    duration_seconds: float,
) -> None:
    conn.execute(
        """
        UPDATE recon_run_team
        SET status = %s, error = %s, processed = %s, updated = %s, skipped = %s, outcomes = %s,
            commits = %s, finished_at = now(), duration_seconds = %s
        WHERE job_id = %s AND team_id = %s
        """,
        (
            status,
            error,
            processed,
            updated,
            skipped,
            json.dumps(outcomes),
            commits,
            duration_seconds,
            job_id,
            team_id,
        ),
    )
