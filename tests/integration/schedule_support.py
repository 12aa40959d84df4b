"""Helpers of the `runner schedule` / `runner report` / Dagster tests: seeded PostHog-shaped data, a
config file, the commands run in this process, and a way to make one team's updates fail.

The failing team is made by a Postgres trigger that rejects updates of that team's persons, the way a
constraint or a lock timeout would: the applier's per-team error boundary catches it (R11.2). Dropping
the trigger stands for fixing the cause before pass 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from click.testing import CliRunner

from runner.cli import main
from runner.config import faults
from runner.local import seed

W0 = seed.DEFAULT_BUG_WINDOW_START
W1 = seed.DEFAULT_BUG_WINDOW_END
WINDOW = {"bug_window_start": W0, "bug_window_end": W1}

# Small enough for seconds per dbt build, big enough that every team but the quiet last one has diffs.
SEED = {"teams": 4, "persons": 160, "events": 2400, "seed": 11}


def reset_models(client: Any) -> None:
    """Forget every model a previous test built (the incremental per-window model remembers what it
    built; a new seed needs a fresh start). The database stays: dbt's adapter remembers it exists."""
    client.command("CREATE DATABASE IF NOT EXISTS recon")
    names = client.query("SELECT name FROM system.tables WHERE database = 'recon'").result_rows
    for (name,) in names:
        client.command(f"DROP TABLE IF EXISTS recon.`{name}` SYNC")


def seed_data(pg_url: str, **overrides: Any) -> seed.SeedResult:
    from runner.stores import warehouse

    reset_models(warehouse.client())
    return seed.seed(**{**SEED, **overrides}, pg_url=pg_url)


def reject_updates(conn: psycopg.Connection, team_id: int) -> None:
    conn.execute(
        """
        CREATE OR REPLACE FUNCTION recon_test_reject_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'updates of team % are rejected (test trigger)', NEW.team_id;
        END $$
        """
    )
    conn.execute("DROP TRIGGER IF EXISTS recon_test_reject_update ON posthog_person")
    conn.execute(
        f"CREATE TRIGGER recon_test_reject_update BEFORE UPDATE ON posthog_person FOR EACH ROW "
        f"WHEN (NEW.team_id = {int(team_id)}) EXECUTE FUNCTION recon_test_reject_update()"
    )


def allow_updates(conn: psycopg.Connection) -> None:
    conn.execute("DROP TRIGGER IF EXISTS recon_test_reject_update ON posthog_person")


def write_config(directory: Path, name: str, **fields: Any) -> Path:
    path = directory / name
    path.write_text(json.dumps({**WINDOW, **fields}))
    return path


@dataclass
class CommandRun:
    exit_code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.json_lines() if line.get("type") == kind]


def runner(*args: str) -> CommandRun:
    """`runner ARGS` in this process (it shares the session's embedded engine)."""
    faults.reset()
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return CommandRun(result.exit_code, result.stdout, result.stderr)


def ledger(conn: psycopg.Connection) -> dict[tuple[str, int], tuple[str, str | None]]:
    """(job id, team) -> (status, error) of every ledger row."""
    rows = conn.execute("SELECT job_id, team_id, status, error FROM recon_run_team").fetchall()
    return {(job, int(team)): (status, error) for job, team, status, error in rows}
