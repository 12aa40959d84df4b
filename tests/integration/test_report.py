"""`runner report`: the latest result per team from the run ledger (R11.8), totals deduplicated and
raw, filters, the CSV that `runner schedule --team-ids-from` reads back, exit codes."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from schedule_support import runner
from targets_util import use_targets

from runner.config import schedule
from runner.stores import ledger

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def attempt(
    pg: psycopg.Connection,
    job_id: str,
    team_id: int,
    status: str,
    at: datetime,
    *,
    counts: tuple[int, int, int] = (0, 0, 0),
    error: str | None = None,
    chunk: str | None = None,
    kind: str = "apply",
) -> None:
    if pg.execute("SELECT 1 FROM recon_run WHERE job_id = %s", (job_id,)).fetchone() is None:
        ledger.start_run(pg, job_id, kind, {})
    ledger.start_team(pg, job_id, team_id, chunk or f"team_{team_id}")
    if status != ledger.RUNNING:
        processed, updated, skipped = counts
        ledger.finish_team(
            pg,
            job_id,
            team_id,
            status=status,
            error=error,
            processed=processed,
            updated=updated,
            skipped=skipped,
            outcomes={},
            commits=0,
            duration_seconds=1.0,
        )
    pg.execute(
        "UPDATE recon_run_team SET started_at = %s, finished_at = CASE WHEN status = 'running' THEN NULL "
        "ELSE %s END WHERE job_id = %s AND team_id = %s",
        (at, at + timedelta(seconds=5), job_id, team_id),
    )


ERROR = 'InternalError: updates rejected\nDETAIL: "quoted", with a comma'


@pytest.fixture
def history(clean_pg):
    pg = clean_pg
    # pass 1 (schedule sched-aaa): team 1 failed, team 2 succeeded, team 3 failed
    attempt(pg, "sched-aaa-range-1-3", 1, "failed", T0, counts=(10, 4, 6), error=ERROR, chunk="teams_1_3")
    attempt(pg, "sched-aaa-range-1-3", 2, "succeeded", T0, counts=(5, 5, 0), chunk="teams_1_3")
    attempt(pg, "sched-aaa-range-1-3", 3, "failed", T0, counts=(7, 0, 7), error="timeout", chunk="teams_1_3")
    # pass 2 (schedule sched-bbb) a day later: team 1 succeeded, team 3 still running (or killed)
    later = T0 + timedelta(days=1)
    attempt(pg, "sched-bbb-teams-0-0", 1, "succeeded", later, counts=(10, 6, 4))
    attempt(pg, "sched-bbb-teams-1-1", 3, "running", later + timedelta(minutes=1))
    # a restore run is not a reconciliation result
    attempt(pg, "restore-1", 2, "failed", later, error="not ours", kind="restore")
    return pg


def test_latest_result_per_team_and_totals(history):
    run = runner("report", "--output", "json", "--details")
    assert run.exit_code == 1
    doc = run.json_lines()[0]
    assert doc["counts"] == {"succeeded": 2, "failed": 0, "unfinished": 1}
    latest = {r["team_id"]: (r["status"], r["run_id"]) for r in doc["listed"]}
    assert latest == {
        1: ("succeeded", "sched-bbb-teams-0-0"),
        2: ("succeeded", "sched-aaa-range-1-3"),
        3: ("unfinished", "sched-bbb-teams-1-1"),
    }
    assert doc["totals"]["deduplicated"] == {
        "persons_processed": 15,
        "persons_updated": 11,
        "persons_skipped": 4,
    }
    assert doc["totals"]["raw"] == {"persons_processed": 32, "persons_updated": 15, "persons_skipped": 17}
    assert doc["results"] == 5
    assert [r["run_id"] for r in doc["runs"]] == [
        "sched-bbb-teams-1-1",
        "sched-bbb-teams-0-0",
        "sched-aaa-range-1-3",
    ]
    assert doc["runs"][2]["succeeded"] == 1 and doc["runs"][2]["failed"] == 2
    assert len(doc["attempts"]) == 5


def test_failed_teams_to_csv_and_back(history, tmp_path):
    out = tmp_path / "failed.csv"
    run = runner("report", "--until", "2026-02-02", "--status", "failed", "--output-csv", str(out))
    assert run.exit_code == 1
    assert "teams (until 2026-02-02 00:00:00): 3: 1 succeeded, 2 failed" in run.stdout
    assert "persons, latest result per team: processed=22 updated=9 skipped=13" in run.stdout
    assert "wrote 2 teams" in run.stdout
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        [
            "team_id",
            "status",
            "error",
            "run_id",
            "step_key",
            "persons_processed",
            "persons_updated",
            "persons_skipped",
        ],
        ["1", "failed", ERROR, "sched-aaa-range-1-3", "teams_1_3", "10", "4", "6"],
        ["3", "failed", "timeout", "sched-aaa-range-1-3", "teams_1_3", "7", "0", "7"],
    ]
    assert schedule.read_team_ids_csv(out) == [1, 3]


def test_filters(history):
    def listed(*args: str) -> dict[int, str]:
        doc = runner("report", "--output", "json", *args).json_lines()[0]
        return {r["team_id"]: r["status"] for r in doc["listed"]}

    assert listed("--since", "2026-02-02") == {1: "succeeded", 3: "unfinished"}
    assert listed("--since", "2026-02-01 12:00:00", "--until", "2026-02-01 12:00:01") == {
        1: "failed",
        2: "succeeded",
        3: "failed",
    }
    assert listed("--job-id", "sched-bbb-teams-0-0", "--job-id", "sched-bbb-teams-1-1") == {
        1: "succeeded",
        3: "unfinished",
    }
    assert listed("--schedule-id", "sched-aaa") == {1: "failed", 2: "succeeded", 3: "failed"}
    assert listed("--schedule-id", "sched-aa") == {}
    assert listed("--status", "unfinished") == {3: "unfinished"}
    assert listed("--status", "succeeded", "--schedule-id", "sched-bbb") == {1: "succeeded"}


def test_exit_codes(history, monkeypatch):
    assert runner("report", "--job-id", "sched-bbb-teams-0-0").exit_code == 0
    assert runner("report", "--schedule-id", "sched-aaa").exit_code == 1
    assert runner("report", "--job-id", "no-such-job").exit_code == 0  # nothing failed
    bad = runner("report", "--since", "2026-02-03", "--until", "2026-02-02")
    assert bad.exit_code == 2 and "must be after --since" in bad.stderr
    use_targets(monkeypatch, postgres="postgresql://nobody@127.0.0.1:1/none", kafka="127.0.0.1:1")
    down = runner("report")
    assert down.exit_code == 2 and "cannot connect to Postgres" in down.stderr


def test_human_details_show_every_attempt_of_teams_not_succeeded(history):
    run = runner("report", "--details")
    assert "runs (newest first):" in run.stdout
    assert (
        "sched-aaa-range-1-3  started 2026-02-01T12:00:00+00:00: 3 teams, 1 succeeded, 2 failed" in run.stdout
    )
    section = run.stdout.split("team 3  unfinished", 1)[1]
    assert "attempt 2026-02-02 12:01:00 run sched-bbb-teams-1-1: unfinished" in section
    assert "attempt 2026-02-01 12:00:00 run sched-aaa-range-1-3: failed: timeout" in section


def test_status_filter_covers_every_status_a_team_can_have(history, tmp_path):
    """`--status`: the report's statuses (failed keeps counting incomplete teams, so a re-run of the
    failed ones retries them) and the ledger's own (`incomplete`, `running`)."""
    later = T0 + timedelta(days=1)
    incomplete = "incomplete: persons not applied: 2 version_conflict"
    attempt(history, "sched-bbb-teams-2-2", 4, "incomplete", later, counts=(9, 7, 0), error=incomplete)

    def listed(*args: str) -> dict[int, str]:
        doc = runner("report", "--output", "json", *args).json_lines()[0]
        return {r["team_id"]: r["ledger_status"] for r in doc["listed"]}

    assert listed("--status", "succeeded") == {1: "succeeded", 2: "succeeded"}
    assert listed("--status", "failed") == {4: "incomplete"}
    assert listed("--status", "incomplete") == {4: "incomplete"}
    assert listed("--status", "unfinished") == {3: "running"}
    assert listed("--status", "running") == {3: "running"}
    assert listed("--status", "incomplete", "--until", "2026-02-02") == {}
    assert listed("--status", "failed", "--until", "2026-02-02") == {1: "failed", 3: "failed"}

    doc = runner("report", "--output", "json").json_lines()[0]
    assert doc["counts"] == {"succeeded": 2, "failed": 1, "unfinished": 1}
    assert doc["ledger_counts"] == {"succeeded": 2, "failed": 0, "incomplete": 1, "running": 1}

    out = tmp_path / "incomplete.csv"
    run = runner("report", "--status", "incomplete", "--output-csv", str(out))
    assert run.exit_code == 1
    assert "teams (all runs): 4: 2 succeeded, 1 failed (1 incomplete), 1 unfinished" in run.stdout
    assert "incomplete teams (latest result):" in run.stdout
    assert "  team 4  failed (incomplete)  run sched-bbb-teams-2-2" in run.stdout
    assert f"    error: {incomplete}" in run.stdout
    assert "team 3" not in run.stdout
    with out.open(newline="") as handle:
        assert [row[:2] for row in csv.reader(handle)] == [["team_id", "status"], ["4", "failed"]]
    assert schedule.read_team_ids_csv(out) == [4]

    none = runner("report", "--status", "incomplete", "--schedule-id", "sched-aaa")
    assert "no incomplete teams (latest result)" in none.stdout

    bad = runner("report", "--status", "broken")
    assert bad.exit_code == 2 and "succeeded" in bad.stderr and "incomplete" in bad.stderr
