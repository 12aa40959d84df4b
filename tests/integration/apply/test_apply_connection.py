"""Issue 11, fault 4: the Postgres backends are terminated mid-run. The team being applied fails with its
committed batches counted, the next team is attempted (and applied) on new connections, the summary is
printed, the ledger holds the true counts, and a re-run of the job finishes the work."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from apply_support import (
    TS,
    Diff,
    insert_ch_persons,
    insert_diffs,
    insert_pg_person,
    insert_summary,
    new_uuid,
)

from runner.config import faults

pytestmark = pytest.mark.integration


def terminate_backends_at_pause(marker: Path, pg_url: str, committed_rows: int) -> threading.Thread:
    """Once the run pauses at the fault point and `committed_rows` outbox rows are committed, terminate
    the run's backends (its apply connections and its ledger connection), then let the run go on."""

    def act() -> None:
        deadline = time.monotonic() + 60
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                committed = conn.execute("SELECT count(*) FROM recon_outbox").fetchone()[0]
                if marker.exists() and committed >= committed_rows:
                    break
                time.sleep(0.05)
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'person_property_reconciliation'"
            )
        marker.unlink()

    thread = threading.Thread(target=act, daemon=True)
    thread.start()
    return thread


def seed_teams(env, teams: dict[int, list]) -> None:
    """Each team's persons at version 2 with plan free in both stores, and a diff setting plan paid."""
    for team_id, uuids in teams.items():
        insert_ch_persons(env["ch"], [(team_id, u, {"plan": "free"}, 2) for u in uuids])
        for u in uuids:
            insert_pg_person(env["pg"], team_id, u, {"plan": "free"}, 2)
        insert_diffs(env["ch"], [Diff(team_id, u, 2, set={"plan": ('"paid"', TS)}) for u in uuids])
    insert_summary(env["ch"], {team_id: len(uuids) for team_id, uuids in teams.items()})


def run_with_backends_terminated(run_apply, pg_url, tmp_path, monkeypatch, fault, committed_rows, *args):
    """Run apply; at the fault point (once `committed_rows` are committed) its backends are terminated."""
    marker = tmp_path / "fault"
    monkeypatch.setenv(faults.ENV_FAULT, fault)
    monkeypatch.setenv(faults.ENV_FAULT_FILE, str(marker))
    actor = terminate_backends_at_pause(marker, pg_url, committed_rows=committed_rows)
    run = run_apply(*args, "--output", "json")
    actor.join(5)
    monkeypatch.delenv(faults.ENV_FAULT)
    return run


def test_a_connection_lost_while_idle_does_not_fail_the_next_team(
    env, run_apply, pg_rows, pg_url, tmp_path, monkeypatch
):
    """Each team fits one batch, so team 1 works on one of the two apply connections while the other
    waits idle. Both backends are terminated during team 1: team 1 fails; team 2, which would have
    started on the idle (dead) connection, is applied on a fresh one, as is team 3."""
    seed_teams(env, {team_id: [new_uuid(300 + 10 * team_id + i) for i in range(2)] for team_id in (1, 2, 3)})
    run = run_with_backends_terminated(
        run_apply,
        pg_url,
        tmp_path,
        monkeypatch,
        "before_lock:1:pause",  # team 1's only batch
        0,
        "--job-id",
        "job-idle-lost",
        "--batch-size",
        "10",
    )

    assert run.exit_code == 1, run.stdout + run.stderr
    status = {t["team_id"]: (t["status"], t["updated"]) for t in run.summary()["teams"]}
    assert status == {1: ("failed", 0), 2: ("succeeded", 2), 3: ("succeeded", 2)}


def test_lost_connection_fails_the_team_with_true_counts_and_the_run_goes_on(
    env, run_apply, pg_rows, pg_url, tmp_path, monkeypatch
):
    team1 = [new_uuid(100 + i) for i in range(4)]
    team2 = [new_uuid(200 + i) for i in range(2)]
    seed_teams(env, {1: team1, 2: team2})
    run = run_with_backends_terminated(
        run_apply,
        pg_url,
        tmp_path,
        monkeypatch,
        "before_lock:2:pause",  # team 1's second batch
        2,
        "--job-id",
        "job-lost",
        "--batch-size",
        "2",
    )

    assert run.exit_code == 1, run.stdout + run.stderr
    teams = {t["team_id"]: t for t in run.summary()["teams"]}
    assert teams[1]["status"] == "failed" and (teams[1]["updated"], teams[1]["commits"]) == (2, 1)
    assert teams[2]["status"] == "succeeded" and teams[2]["updated"] == 2
    versions = dict(pg_rows("SELECT uuid, version FROM posthog_person"))
    assert [versions[u] for u in team1] == [3, 3, 2, 2] and [versions[u] for u in team2] == [3, 3]
    ledger = pg_rows(
        "SELECT team_id, status, updated FROM recon_run_team WHERE job_id = 'job-lost' ORDER BY 1"
    )
    assert ledger == [(1, "failed", 2), (2, "succeeded", 2)]
    assert pg_rows("SELECT status FROM recon_run WHERE job_id = 'job-lost'") == [("failed",)]

    again = run_apply("--job-id", "job-lost", "--output", "json")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert {v for _, v in pg_rows("SELECT uuid, version FROM posthog_person")} == {3}


def test_a_batch_decided_beside_the_one_that_failed_is_rolled_back(
    env, run_apply, pg_rows, pg_url, tmp_path, monkeypatch
):
    """Batches that are whole chunks are decided and written two at a time (the set path): while team
    1's second batch waits at the fault point, its third is written on the other connection. The second
    loses its connection, so the team fails; the third, written but not committed, is rolled back (its
    persons count as team_failed), and only the first batch stays."""
    team1 = [new_uuid(300 + i) for i in range(6)]
    team2 = [new_uuid(400 + i) for i in range(2)]
    seed_teams(env, {1: team1, 2: team2})
    run = run_with_backends_terminated(
        run_apply,
        pg_url,
        tmp_path,
        monkeypatch,
        "before_lock:2:pause",  # team 1's second batch
        2,
        "--job-id",
        "job-beside",
        "--batch-size",
        "2",
    )

    assert run.exit_code == 1, run.stdout + run.stderr
    teams = {t["team_id"]: t for t in run.summary()["teams"]}
    assert teams[1]["status"] == "failed" and (teams[1]["updated"], teams[1]["commits"]) == (2, 1)
    assert teams[2]["status"] == "succeeded" and teams[2]["updated"] == 2
    versions = dict(pg_rows("SELECT uuid, version FROM posthog_person"))
    assert [versions[u] for u in team1] == [3, 3, 2, 2, 2, 2] and [versions[u] for u in team2] == [3, 3]
    assert pg_rows("SELECT count(*) FROM recon_outbox WHERE team_id = 1") == [(2,)]
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup WHERE team_id = 1") == [(2,)]

    again = run_apply("--job-id", "job-beside", "--output", "json")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert {v for _, v in pg_rows("SELECT uuid, version FROM posthog_person")} == {3}


def test_the_next_team_beside_a_lost_last_batch_is_applied_in_full(
    env, run_apply, pg_rows, pg_url, tmp_path, monkeypatch
):
    """Team 1's last batch pauses before its commit while team 2's first batch is decided and written
    beside it; the backends are terminated. Team 1 fails with its first batch counted; team 2's first
    batch, which lost its connection in the same outage, runs once more on a new connection, and its
    later batches go on, on new connections too."""
    team1 = [new_uuid(500 + i) for i in range(4)]
    team2 = [new_uuid(600 + i) for i in range(6)]
    seed_teams(env, {1: team1, 2: team2})
    run = run_with_backends_terminated(
        run_apply,
        pg_url,
        tmp_path,
        monkeypatch,
        "before_commit:2:pause",  # team 1's second (last) batch
        2,
        "--job-id",
        "job-next",
        "--batch-size",
        "2",
    )

    assert run.exit_code == 1, run.stdout + run.stderr
    teams = {t["team_id"]: t for t in run.summary()["teams"]}
    assert teams[1]["status"] == "failed" and (teams[1]["updated"], teams[1]["commits"]) == (2, 1)
    assert teams[2]["status"] == "succeeded", teams[2]
    assert (teams[2]["updated"], teams[2]["commits"]) == (6, 3)
    versions = dict(pg_rows("SELECT uuid, version FROM posthog_person"))
    assert [versions[u] for u in team1] == [3, 3, 2, 2] and {versions[u] for u in team2} == {3}
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup WHERE team_id = 2") == [(6,)]
