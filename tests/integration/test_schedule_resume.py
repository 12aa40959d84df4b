"""Resume after kill: `runner schedule` processes killed (fault injection: `os._exit`, like kill -9)
after its first chunk was recorded, then in the middle of the second chunk; each new invocation runs
only the chunks without a record, never redoes a finished one, and finishes the interrupted chunk
under the same job id without applying anyone twice.

The schedule runs in subprocesses with an engine path of their own (chDB: one process per path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from schedule_support import SEED, write_config

from runner.config import faults, settings

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]


def run(args: list[str], env: dict[str, str], fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(env)
    if fault:
        env[faults.ENV_FAULT] = fault
    return subprocess.run(
        [sys.executable, "-c", "from runner.cli import main; main()", *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def env(fresh_chdb_path, clean_pg, pg_url, kafka_bootstrap):
    environment = {
        **os.environ,
        settings.ENV_CHDB_PATH: str(fresh_chdb_path),
        settings.ENV_PERSONS_DB: pg_url,
        settings.ENV_KAFKA: kafka_bootstrap,
        settings.ENV_CLICKHOUSE_URL: f"chdb://{fresh_chdb_path}",
        "PYTHONPATH": str(PROJECT),
    }
    environment.pop(faults.ENV_FAULT, None)
    seeded = run(["demo", "seed", *(f"--{k}={v}" for k, v in SEED.items())], environment)
    assert seeded.returncode == 0, seeded.stderr
    return environment


def lines(proc: subprocess.CompletedProcess[str], kind: str) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if json.loads(line).get("type") == kind]


def test_resume_after_kill(env, clean_pg, tmp_path):
    pg = clean_pg
    config = write_config(tmp_path, "pass1.json", range_start=1, range_end=4, chunk_size=2, batch_size=1)
    args = ["schedule", "--config", str(config), "--output", "json"]

    # 1. Killed right after the first chunk was recorded.
    first = run(args, env, fault="schedule_chunk_recorded:1")
    assert first.returncode == faults.EXIT_CODE, first.stderr
    (head,) = lines(first, "schedule")
    sid = head["schedule_id"]
    assert [c["chunk"] for c in lines(first, "chunk")] == ["range-1-2"]
    assert pg.execute("SELECT chunk, status FROM recon_schedule_chunk").fetchall() == [
        ("range-1-2", "succeeded")
    ]
    chunk1_rows = pg.execute(
        "SELECT team_id, status, started_at, finished_at, updated FROM recon_run_team ORDER BY team_id"
    ).fetchall()
    assert [(team, status) for team, status, *_ in chunk1_rows] == [(1, "succeeded"), (2, "succeeded")]

    # 2. Killed in the second chunk, after its first batch was committed and before it was published.
    second = run(args, env, fault="after_commit:1")
    assert second.returncode == faults.EXIT_CODE, second.stderr
    (head2,) = lines(second, "schedule")
    assert (head2["schedule_id"], head2["finished_before"], head2["to_run"]) == (sid, 1, 1)
    assert lines(second, "chunk") == []
    assert pg.execute("SELECT count(*) FROM recon_schedule_chunk").fetchone() == (1,)
    assert pg.execute(
        "SELECT status FROM recon_run_team WHERE job_id = %s AND team_id = 3", (f"{sid}-range-3-4",)
    ).fetchall() == [("running",)]
    # batch_size 1: one person committed, not published
    assert pg.execute("SELECT count(*) FROM recon_outbox_status WHERE published_at IS NULL").fetchone() == (
        1,
    )
    assert pg.execute(
        "SELECT count(*) FROM posthog_person_reconciliation_backup WHERE team_id = 3"
    ).fetchone() == (1,)

    # The report sees the interrupted team as unfinished.
    report = run(["report", "--output", "json"], env)
    assert report.returncode == 1
    assert json.loads(report.stdout)["counts"] == {"succeeded": 2, "failed": 0, "unfinished": 1}

    # 3. The next invocation runs only the unfinished chunk, under the same job id.
    third = run(args, env)
    assert third.returncode == 0, third.stderr
    (head3,) = lines(third, "schedule")
    assert (head3["finished_before"], head3["to_run"]) == (1, 1)
    (chunk,) = lines(third, "chunk")
    assert (chunk["chunk"], chunk["job_id"], chunk["status"]) == (
        "range-3-4",
        f"{sid}-range-3-4",
        "succeeded",
    )

    # The first chunk was not touched again.
    assert (
        pg.execute(
            "SELECT team_id, status, started_at, finished_at, updated FROM recon_run_team "
            "WHERE team_id IN (1, 2) ORDER BY team_id"
        ).fetchall()
        == chunk1_rows
    )
    # Nobody was applied twice: one backup per updated person, each version bumped exactly once.
    team3 = pg.execute(
        "SELECT updated FROM recon_run_team WHERE job_id = %s AND team_id = 3", (f"{sid}-range-3-4",)
    ).fetchone()[0]
    backups = pg.execute(
        "SELECT count(*), count(DISTINCT person_id), bool_and(b.version_after = coalesce(b.version, 0) + 1), "
        "bool_and(p.version = b.version_after) FROM posthog_person_reconciliation_backup AS b "
        "JOIN posthog_person AS p ON p.id = b.person_id WHERE b.team_id = 3"
    ).fetchone()
    assert backups == (team3, team3, True, True) and team3 > 1
    assert pg.execute("SELECT count(*) FROM recon_outbox_status WHERE published_at IS NULL").fetchone() == (
        0,
    )
    assert pg.execute("SELECT chunk, status FROM recon_schedule_chunk ORDER BY chunk").fetchall() == [
        ("range-1-2", "succeeded"),
        ("range-3-4", "succeeded"),
    ]
    assert run(["report"], env).returncode == 0
