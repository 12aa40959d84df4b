"""The two-pass workflow end to end on seeded data (R12.8): pass 1 in single-pass mode over a team id
range, where one team fails and the others go on; the failed teams exported with `runner report`;
pass 2 in windowed mode for exactly those teams with `--team-ids-from`."""

from __future__ import annotations

import csv

import pytest
from schedule_support import allow_updates, ledger, reject_updates, runner, seed_data, write_config

pytestmark = pytest.mark.integration

FAILING_TEAM = 2


@pytest.fixture
def seeded(clean_pg, pg_url, kafka_bootstrap):
    result = seed_data(pg_url)
    yield result
    allow_updates(clean_pg)


def test_two_passes(seeded, clean_pg, tmp_path):
    pg = clean_pg
    assert seeded.team_ids == [1, 2, 3, 4] and seeded.quiet_team_id == 4
    reject_updates(pg, FAILING_TEAM)
    pass1 = write_config(
        tmp_path,
        "pass1.json",
        range_start=1,
        range_end=4,
        chunk_size=2,
        teams_per_chunk=1,
        team_ch_props_fetch_window_seconds=0,
        batch_size=10,
    )

    # --- pass 1: single pass over the range; team 2 fails, its chunk and the other chunk go on ---
    run1 = runner("schedule", "--config", str(pass1), "--output", "json")
    assert run1.exit_code == 1, run1.stderr
    (head,) = run1.of_type("schedule")
    sid = head["schedule_id"]
    assert (head["chunks"], head["to_run"], head["diff_mode"], head["embedded"]) == (
        2,
        2,
        "single_pass",
        True,
    )
    assert "one at a time" in head["note"]
    chunks = {c["chunk"]: c for c in run1.of_type("chunk")}
    assert set(chunks) == {"range-1-2", "range-3-4"}
    first = chunks["range-1-2"]
    assert first["status"] != "build_failed", first["error"]
    assert (first["status"], first["teams_count"], first["teams_failed"], first["failed_team_ids"]) == (
        "failed",
        2,
        1,
        "[2]",
    )
    results = {t["team_id"]: t for t in first["teams_results"]}
    assert results[1]["status"] == "success" and results[1]["persons_updated"] > 0
    assert results[2]["status"] == "failed" and "rejected (test trigger)" in results[2]["error"]
    assert chunks["range-3-4"]["status"] == "succeeded"
    assert chunks["range-3-4"]["team_ids"] == "[3]"  # team 4 is quiet: discovery skips it (R4.1)
    (summary,) = run1.of_type("summary")
    assert (summary["teams"], summary["teams_failed"], summary["failed_team_ids"]) == (3, 1, [2])

    # Every team's outcome is in the ledger, under the chunk's job id; progress is recorded per chunk.
    rows = ledger(pg)
    assert {key: status for key, (status, _) in rows.items()} == {
        (f"{sid}-range-1-2", 1): "succeeded",
        (f"{sid}-range-1-2", 2): "failed",
        (f"{sid}-range-3-4", 3): "succeeded",
    }
    chunk_ids = dict(pg.execute("SELECT team_id, chunk_id FROM recon_run_team").fetchall())
    assert chunk_ids == {1: "team_1", 2: "team_2", 3: "team_3"}  # teams_per_chunk 1 (R11.1)
    assert pg.execute("SELECT job_id, status FROM recon_run ORDER BY job_id").fetchall() == [
        (f"{sid}-range-1-2", "failed"),
        (f"{sid}-range-3-4", "succeeded"),
    ]
    assert dict(pg.execute("SELECT chunk, status FROM recon_schedule_chunk").fetchall()) == {
        "range-1-2": "failed",
        "range-3-4": "succeeded",
    }
    assert pg.execute(
        "SELECT count(*) FROM posthog_person_reconciliation_backup WHERE team_id = 2"
    ).fetchone() == (0,)

    # Running pass 1 again redoes nothing: both chunks finished. It still exits 1: one has a failed team.
    again = runner("schedule", "--config", str(pass1), "--output", "json")
    assert again.exit_code == 1, again.stderr
    assert again.of_type("schedule")[0]["to_run"] == 0 and again.of_type("chunk") == []
    assert again.of_type("summary")[0]["chunks_failed_earlier"] == [f"{sid}-range-1-2"]

    # --- export the failed teams ---
    failed_csv = tmp_path / "failed.csv"
    report = runner("report", "--schedule-id", sid, "--status", "failed", "--output-csv", str(failed_csv))
    assert report.exit_code == 1
    assert "3: 2 succeeded, 1 failed" in report.stdout and "wrote 1 teams" in report.stdout
    with failed_csv.open() as handle:
        exported = list(csv.DictReader(handle))
    assert [(r["team_id"], r["status"], r["run_id"], r["step_key"]) for r in exported] == [
        ("2", "failed", f"{sid}-range-1-2", "team_2")
    ]
    assert "rejected (test trigger)" in exported[0]["error"]
    assert exported[0]["persons_updated"] == "0"

    # --- pass 2: windowed, one team per chunk, one at a time, exactly the failed teams ---
    allow_updates(pg)  # the cause is fixed
    pass2 = write_config(
        tmp_path,
        "pass2.json",
        chunk_size=1,
        teams_per_chunk=1,
        max_concurrent_jobs=1,
        max_concurrent_tasks=1,
        team_ch_props_fetch_window_seconds=3600,
        person_batch_size=10_000,
    )
    run2 = runner("schedule", "--config", str(pass2), "--team-ids-from", str(failed_csv), "--output", "json")
    assert run2.exit_code == 0, run2.stderr
    head2 = run2.of_type("schedule")[0]
    assert head2["diff_mode"] == "windowed" and head2["schedule_id"] != sid and head2["chunks"] == 1
    (chunk2,) = run2.of_type("chunk")
    assert chunk2["team_ids"] == "[2]" and chunk2["status"] == "succeeded" and chunk2["persons_updated"] > 0
    pass2_job = chunk2["job_id"]
    assert pass2_job == f"{head2['schedule_id']}-teams-0-0"
    backups = pg.execute(
        "SELECT DISTINCT job_id, team_id FROM posthog_person_reconciliation_backup WHERE team_id = 2"
    ).fetchall()
    assert backups == [(pass2_job, 2)]

    # The report now takes each team's latest result: all succeeded.
    final = runner("report", "--output", "json", "--details")
    assert final.exit_code == 0, final.stdout
    document = final.json_lines()[0]
    assert document["counts"] == {"succeeded": 3, "failed": 0, "unfinished": 0}
    latest = {r["team_id"]: r for r in document["listed"]}
    assert latest[2]["run_id"] == pass2_job and latest[2]["status"] == "succeeded"
    assert document["results"] == 4  # team 2 twice
    # Raw totals add every attempt. Team 2's pass-1 attempt failed as a whole, which counts nobody as
    # processed or skipped, so here they equal the deduplicated ones.
    (first,) = [a for a in document["attempts"] if a["team_id"] == 2 and a["run_id"] != pass2_job]
    assert (first["status"], first["persons_processed"], first["persons_skipped"]) == ("failed", 0, 0)
    assert document["totals"]["raw"] == document["totals"]["deduplicated"]
