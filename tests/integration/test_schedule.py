"""`runner schedule`: bad configuration exits 2 having written nothing; a chunk whose build fails is
recorded (its teams failed in the ledger) while the others go on, and the next invocation retries it;
a dry run writes nothing; one process per schedule; `--plan`."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from schedule_support import WINDOW, ledger, runner, seed_data, write_config
from targets_util import use_targets

from runner.jobs import chunk_run
from runner.jobs.dbt import DbtFailed
from runner.rules.scheduling import Chunk

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(clean_pg, pg_url, kafka_bootstrap):
    return seed_data(pg_url)


def nothing_written(pg: psycopg.Connection) -> bool:
    counts = [
        pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in ("recon_schedule", "recon_schedule_chunk", "recon_run", "recon_run_team", "recon_outbox")
    ]
    return counts == [0] * 5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty: nothing to schedule"),
        ("{oops", "is not valid JSON"),
        (json.dumps({**WINDOW, "team_ids": [1], "range_start": 1, "range_end": 2}), "cannot specify both"),
        (
            json.dumps({**WINDOW, "team_ids": []}),
            "must specify either team_ids or both range_start and range_end",
        ),
        (json.dumps({**WINDOW, "team_ids": [1], "chunk_size": 0}), "chunk_size must be positive, got 0"),
        (
            json.dumps({**WINDOW, "team_ids": [1], "max_concurrent_jobs": 60}),
            "max_concurrent_jobs 60 exceeds cap of 50",
        ),
        (
            json.dumps({**WINDOW, "team_ids": [1], "max_concurrent_tasks": 101}),
            "max_concurrent_tasks 101 exceeds cap of 100",
        ),
        (
            json.dumps({"team_ids": [1], "bug_window_end": WINDOW["bug_window_end"]}),
            "bug_window_start is required",
        ),
        (
            json.dumps({**WINDOW, "range_start": 9, "range_end": 1}),
            "range_start (9) must not be greater than range_end (1)",
        ),
        (
            json.dumps({**WINDOW, "team_ids": [1], "bug_window_end": "tomorrow"}),
            "bug_window_end must be 'YYYY-MM-DD",
        ),
        (
            json.dumps({**WINDOW, "team_ids": [1], "persons_db_env_var": "NO_SUCH_RECON_VAR"}),
            "environment variable NO_SUCH_RECON_VAR (persons_db_env_var) is not set",
        ),
        # Issue 13 point 3: strict configuration.
        (json.dumps({**WINDOW, "team_ids": [-5]}), "team_ids must contain team ids only"),
        (
            json.dumps({**WINDOW, "team_ids": [1, 99999999999999999999]}),
            "99999999999999999999 is out of range",
        ),
        (json.dumps({**WINDOW, "range_start": -3, "range_end": 5}), "range_start must be a team id"),
        (json.dumps({**WINDOW, "team_ids": [1], "dryrun": True}), "unknown field 'dryrun'"),
        (json.dumps({**WINDOW, "team_ids": [1], "dryrun": True}), "did you mean 'dry_run'"),
        (json.dumps({**WINDOW, "team_ids": [1], "backup_enable": False}), "did you mean 'backup_enabled'"),
        (json.dumps({**WINDOW, "team_ids": [[1, [2]]]}), "[1, [2]] is not an integer"),
        (json.dumps({**WINDOW, "team_ids": [1], "chunk_size": {"n": 5}}), "chunk_size must be an integer"),
        (json.dumps({**WINDOW, "team_ids": [1], "max_rate": 0}), "max_rate must be a positive number"),
        ('{"team_ids": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"team_ids": [1], "team_ids": [2]}', "gives the field 'team_ids' more than once"),
    ],
)
def test_bad_configuration_exits_2_and_writes_nothing(clean_pg, tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    run = runner("schedule", "--config", str(path))
    assert run.exit_code == 2, run.stdout
    assert message in run.stderr
    assert run.stdout == ""
    assert nothing_written(clean_pg)


@pytest.mark.parametrize(
    ("ids", "message"),
    [("-3", "line 2: team id -3 is out of range"), ("99999999999999999999", "out of range")],
)
def test_team_ids_from_must_be_team_ids(clean_pg, tmp_path, ids, message):
    """Issue 13 point 3: --team-ids-from obeys the same rules, before anything is written."""
    csv_path = tmp_path / "failed.csv"
    csv_path.write_text(f"team_id,status\n{ids},failed\n")
    config = write_config(tmp_path, "c.json")
    run = runner("schedule", "--config", str(config), "--team-ids-from", str(csv_path))
    assert run.exit_code == 2 and message in run.stderr, run.stderr
    assert nothing_written(clean_pg)


def test_plan_of_a_huge_range_is_lazy(clean_pg, tmp_path):
    """Issue 13 point 3: `--plan` of 10^12 one-team chunks lists a bounded head and counts the rest;
    memory does not depend on the range (the old plan allocated every chunk up front)."""
    import tracemalloc

    config = tmp_path / "huge.json"
    config.write_text(json.dumps({**WINDOW, "range_start": 1, "range_end": 1e12, "chunk_size": 1}))
    tracemalloc.start()
    try:
        run = runner("schedule", "--config", str(config), "--plan", "--output", "json")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.exit_code == 0, run.stderr
    records = run.json_lines()
    assert records[0]["job_id"].endswith("-range-1-1") and len(records) == 1001
    assert records[-1] == {"type": "chunk_plan_more", "chunks": 10**12 - 1000, "finished_in_all": 0}
    assert peak < 20 * 2**20, peak
    assert nothing_written(clean_pg)


def test_unreachable_postgres_exits_2(clean_pg, tmp_path, monkeypatch):
    use_targets(monkeypatch, postgres="postgresql://nobody@127.0.0.1:1/none", kafka="127.0.0.1:1")
    run = runner("schedule", "--config", str(write_config(tmp_path, "c.json", team_ids=[1])))
    assert run.exit_code == 2 and "cannot connect to Postgres" in run.stderr
    assert nothing_written(clean_pg)


def test_team_ids_from_an_empty_csv_has_nothing_to_do(clean_pg, tmp_path):
    empty = tmp_path / "failed.csv"
    empty.write_text(
        "team_id,status,error,run_id,step_key,persons_processed,persons_updated,persons_skipped\n"
    )
    run = runner(
        "schedule", "--config", str(write_config(tmp_path, "p2.json")), "--team-ids-from", str(empty)
    )
    assert run.exit_code == 0 and "nothing to do" in run.stdout
    assert nothing_written(clean_pg)


def test_plan_lists_chunks_and_job_ids(clean_pg, tmp_path):
    path = write_config(tmp_path, "c.json", range_start=1, range_end=2500, chunk_size=1000)
    run = runner("schedule", "--config", str(path), "--plan", "--output", "json")
    assert run.exit_code == 0, run.stderr
    plan = run.of_type("chunk_plan")
    assert [(p["min_team_id"], p["max_team_id"], p["status"]) for p in plan] == [
        (1, 1000, "pending"),
        (1001, 2000, "pending"),
        (2001, 2500, "pending"),
    ]
    assert plan[0]["job_id"].endswith("-range-1-1000") and plan[0]["job_id"].startswith("sched-")
    assert nothing_written(clean_pg)


def test_a_second_process_on_the_same_schedule_is_refused(clean_pg, pg_url, tmp_path):
    path = write_config(tmp_path, "c.json", team_ids=[1, 2])
    sid = json.loads(
        runner("schedule", "--config", str(path), "--plan", "--output", "json").stdout.splitlines()[0]
    )["job_id"].rsplit("-teams-", 1)[0]
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", ("recon_schedule:" + sid,))
        run = runner("schedule", "--config", str(path))
    assert run.exit_code == 2 and f"schedule {sid} is being run by another process" in run.stderr


def failing_build_for(team_id: int, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """dbt fails for chunks that select `team_id`; other chunks build for real. Returns the vars seen."""
    real = chunk_run.dbt_in_process
    seen: list[dict] = []

    def invoker(extra=None):
        build = real(extra)

        def invoke(dbt_vars):
            seen.append(dbt_vars)
            if team_id in dbt_vars.get("team_ids", []):
                raise DbtFailed("run", "person_property_diff: Memory limit (total) exceeded")
            return build(dbt_vars)

        return invoke

    monkeypatch.setattr(chunk_run, "dbt_in_process", invoker)
    return seen


def test_a_failed_build_is_recorded_others_go_on_and_the_next_run_retries_it(
    seeded, clean_pg, tmp_path, monkeypatch
):
    pg = clean_pg
    path = write_config(tmp_path, "c.json", team_ids=[1, 3], chunk_size=1, exclude_team_ids=[4])
    seen = failing_build_for(3, monkeypatch)
    started = time.time()
    run = runner("schedule", "--config", str(path), "--output", "json")
    assert run.exit_code == 1, run.stderr
    assert [v["team_ids"] for v in seen] == [[1], [3]]
    # Each chunk builds in a target directory of its own (its partial parsing stays warm).
    first = chunk_run.chunk_target_path(Chunk("0-0", team_ids=(1,)))
    assert first.name == "teams-0-0" and (first / "manifest.json").stat().st_mtime >= started - 1
    assert all(v["exclude_team_ids"] == [4] and v["window_seconds"] == 0 for v in seen)
    chunks = {c["chunk"]: c for c in run.of_type("chunk")}
    assert chunks["teams-0-0"]["status"] == "succeeded" and chunks["teams-0-0"]["persons_updated"] > 0
    failed = chunks["teams-1-1"]
    assert failed["status"] == "build_failed" and "Memory limit" in failed["error"]
    assert failed["teams_results"] == [
        {
            "team_id": 3,
            "status": "failed",
            "persons_processed": 0,
            "persons_updated": 0,
            "persons_skipped": 0,
            "error": failed["error"],
        }
    ]
    sid = run.of_type("schedule")[0]["schedule_id"]
    rows = ledger(pg)
    assert rows[(f"{sid}-teams-0-0", 1)] == ("succeeded", None)
    status, error = rows[(f"{sid}-teams-1-1", 3)]
    assert status == "failed" and "dbt build failed" in error and "Memory limit" in error
    assert run.of_type("summary")[0]["chunks_build_failed"] == [f"{sid}-teams-1-1"]

    report = runner("report", "--status", "failed", "--output", "json")
    assert report.exit_code == 1
    assert [r["team_id"] for r in report.json_lines()[0]["listed"]] == [3]

    # The build failure applied nothing, so the next invocation retries that chunk (and only it).
    monkeypatch.undo()
    again = runner("schedule", "--config", str(path), "--output", "json")
    assert again.exit_code == 0, again.stderr
    assert [c["chunk"] for c in again.of_type("chunk")] == ["teams-1-1"]
    assert again.of_type("schedule")[0]["finished_before"] == 1
    assert ledger(pg)[(f"{sid}-teams-1-1", 3)] == ("succeeded", None)
    assert runner("report").exit_code == 0


def test_a_range_chunk_that_fails_in_dbt_is_reported_without_teams(clean_pg, tmp_path, monkeypatch):
    def invoker(extra=None):
        def invoke(dbt_vars):
            raise DbtFailed("run", "int_teams__discovered: Timeout exceeded")

        return invoke

    monkeypatch.setattr(chunk_run, "dbt_in_process", invoker)
    path = write_config(tmp_path, "c.json", range_start=1, range_end=2000, chunk_size=1000)
    run = runner("schedule", "--config", str(path))
    assert run.exit_code == 1
    assert run.stdout.count("chunk failed: dbt build failed") == 2
    assert "running the schedule again retries it" in run.stdout
    assert clean_pg.execute("SELECT count(*) FROM recon_run_team").fetchone() == (0,)
    assert clean_pg.execute("SELECT status FROM recon_run").fetchall() == [("failed",), ("failed",)]

    report = runner("report", "--output", "json")
    assert report.exit_code == 1
    unbuilt = report.json_lines()[0]["chunks_failed_before_discovery"]
    assert [(c["min_team_id"], c["max_team_id"]) for c in unbuilt] == [(1, 1000), (1001, 2000)]
    assert "Timeout exceeded" in unbuilt[0]["error"]
    human = runner("report")
    assert "(team ids 1..1000) failed in dbt before its teams were known" in human.stdout


def test_dry_run_builds_and_reports_but_writes_nothing(seeded, clean_pg, tmp_path):
    before = clean_pg.execute("SELECT sum(version), count(*) FROM posthog_person").fetchone()
    path = write_config(tmp_path, "c.json", range_start=1, range_end=4, chunk_size=4)
    run = runner("schedule", "--config", str(path), "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert "dry run: nothing will be written" in run.stdout
    assert "would_update=" in run.stdout and "would_update=0" not in run.stdout
    assert nothing_written(clean_pg)
    assert clean_pg.execute("SELECT sum(version), count(*) FROM posthog_person").fetchone() == before


def test_a_chunk_whose_job_id_another_process_writes_is_not_applied(seeded, clean_pg, pg_url, tmp_path):
    """Issue 13, one process per job id: the schedule's chunks take the job lock too, so a manual
    `runner apply`/`restore` of a chunk's job id and the schedule never write it at once. The chunk
    whose job id is held fails naming the holder, writes nothing, and the next invocation applies it."""
    path = write_config(tmp_path, "c.json", team_ids=[1, 2], chunk_size=1)
    plan = runner("schedule", "--config", str(path), "--plan", "--output", "json")
    held, free = (json.loads(line)["job_id"] for line in plan.stdout.splitlines()[:2])
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", ("recon_job:" + held,))
        run = runner("schedule", "--config", str(path))
    assert run.exit_code == 1, run.stderr
    assert f"job {held} is already being written by another process" in run.stdout + run.stderr
    assert clean_pg.execute("SELECT count(*) FROM recon_outbox WHERE job_id = %s", (held,)).fetchone() == (0,)
    assert clean_pg.execute("SELECT count(*) FROM recon_outbox WHERE job_id = %s", (free,)).fetchone()[0] > 0
    again = runner("schedule", "--config", str(path))
    assert again.exit_code == 0, again.stdout + again.stderr
    assert clean_pg.execute("SELECT count(*) FROM recon_outbox WHERE job_id = %s", (held,)).fetchone()[0] > 0
