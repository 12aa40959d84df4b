"""Issue 11, faults 2, 5, 7 and 8: a person Postgres cannot take, a row that changed between its lock
and the write, and a row another transaction holds fail that person only; the team goes on, the
person is reported with its own outcome and reason, and the run exits 1."""

from __future__ import annotations

import json
import threading
import time

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
from kafka_util import read_topic_json

pytestmark = pytest.mark.integration


def seed(env, team_id: int, values: list[tuple[str, str]], *, kind: str = "set_once") -> list:
    """One person per (key, raw JSON value); each gets that entry (SET_ONCE by default)."""
    uuids = [new_uuid(team_id * 100 + i) for i in range(len(values))]
    insert_ch_persons(env["ch"], [(team_id, u, {"plan": "free"}, 2) for u in uuids])
    for u in uuids:
        insert_pg_person(env["pg"], team_id, u, {"plan": "free"}, 2)
    insert_diffs(
        env["ch"],
        [
            Diff(team_id, u, 2, **{kind: {key: (raw, TS)}})
            for u, (key, raw) in zip(uuids, values, strict=True)
        ],
    )
    return uuids


def test_values_postgres_cannot_take_fail_only_their_person(env, run_apply, pg_rows, kafka_bootstrap):
    team1 = seed(
        env,
        1,
        [
            ("first", '"ok"'),
            ("nul", '"a\\u0000b"'),  # NUL in a value: refused by jsonb
            ("k\u0000ey", '"v"'),  # NUL in a key
            ("overflow", "1e200000"),  # valid JSON, beyond numeric: only Postgres finds out
            ("last", '"ok"'),
        ],
    )
    team2 = seed(env, 2, [("plan", '"paid"')], kind="set")
    insert_summary(env["ch"], {1: 5, 2: 1})

    for attempt in ("job-nul", "job-nul", "job-nul-2"):
        run = run_apply("--job-id", attempt, "--batch-size", "10", "--output", "json")
        assert run.exit_code == 1, run.stdout + run.stderr
        lines = run.persons()
        done = "no_changes" if attempt == "job-nul-2" else "success"  # a new job finds them applied
        assert [lines[str(u)]["outcome"] for u in team1] == [
            done,
            "invalid_value",
            "invalid_value",
            "invalid_value",
            done,
        ]
        reasons = [lines[str(u)]["reason"] for u in team1[1:4]]
        assert lines[str(team1[1])]["set_once"] == {"nul": "a\u0000b"}  # the refused entry is shown
        assert "NUL" in reasons[0] and "NUL" in reasons[1] and "Postgres refused" in reasons[2], reasons
        teams = {t["team_id"]: t for t in run.summary()["teams"]}
        assert teams[1]["status"] == "incomplete" and teams[2]["status"] == "succeeded"
        assert teams[1]["processed"] == 5

    assert pg_rows("SELECT uuid, properties FROM posthog_person WHERE team_id = 1 ORDER BY uuid") == [
        (team1[0], {"plan": "free", "first": "ok"}),
        (team1[1], {"plan": "free"}),
        (team1[2], {"plan": "free"}),
        (team1[3], {"plan": "free"}),
        (team1[4], {"plan": "free", "last": "ok"}),
    ]
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup") == [(3,)]
    published = {key for key, _ in read_topic_json(kafka_bootstrap, env["topic"])}
    assert published == {str(team1[0]), str(team1[4]), str(team2[0])}
    [(status, error, outcomes)] = pg_rows(
        "SELECT status, error, outcomes FROM recon_run_team WHERE job_id = 'job-nul-2' AND team_id = 1"
    )
    assert status == "incomplete" and "invalid_value" in error
    assert outcomes["invalid_value"] == 3
    assert {f["person_uuid"] for f in outcomes["failures"]} == {str(u) for u in team1[1:4]}
    human = run_apply("--job-id", "job-nul-3", "--batch-size", "10")
    assert human.exit_code == 1
    assert "invalid_value" in human.stdout and "NUL" in human.stdout


def test_row_changed_between_lock_and_write_is_retried_not_a_team_failure(
    env, run_apply, pg_rows, kafka_bootstrap
):
    """Fault 7: the update finds a row no longer as it was read (here a trigger swallows the update,
    as a writer ignoring row locks would make it miss). Only that person is affected: its backup and
    outbox rows are not written, it is retried at the end of the team; one that keeps losing ends as
    version_conflict and makes the team incomplete (exit 1), the rest of the team is applied."""
    uuids = seed(env, 1, [("a", '"1"'), ("b", '"2"'), ("c", '"3"'), ("d", '"4"')])
    once, always = uuids[1], uuids[2]
    env["pg"].execute(
        "CREATE TABLE race_attempts (uuid uuid, n int); "
        "CREATE OR REPLACE FUNCTION lose_race() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "DECLARE seen int; BEGIN "
        f"IF NEW.uuid NOT IN ('{once}', '{always}') THEN RETURN NEW; END IF; "
        "SELECT count(*) INTO seen FROM race_attempts WHERE uuid = NEW.uuid; "
        "INSERT INTO race_attempts VALUES (NEW.uuid, seen + 1); "
        f"IF NEW.uuid = '{once}' AND seen > 0 THEN RETURN NEW; END IF; "
        "RETURN NULL; END $$; "
        "CREATE TRIGGER lose_race BEFORE UPDATE ON posthog_person FOR EACH ROW EXECUTE FUNCTION lose_race()"
    )
    insert_summary(env["ch"], {1: 4})
    try:
        run = run_apply("--job-id", "job-race", "--batch-size", "2", "--output", "json")
    finally:
        env["pg"].execute("DROP TABLE race_attempts CASCADE")
    assert run.exit_code == 1, run.stdout + run.stderr
    lines = run.persons()
    assert [lines[str(u)]["outcome"] for u in uuids] == ["success", "success", "version_conflict", "success"]
    assert len(run.json_lines()) == 5  # one line per person, then the summary
    [team] = run.summary()["teams"]
    assert team["status"] == "incomplete" and (team["processed"], team["updated"]) == (4, 3)
    assert pg_rows("SELECT uuid, version FROM posthog_person ORDER BY uuid") == [
        (uuids[0], 3),
        (once, 3),
        (always, 2),
        (uuids[3], 3),
    ]
    backed_up = pg_rows("SELECT uuid FROM posthog_person_reconciliation_backup ORDER BY uuid")
    assert backed_up == [(uuids[0],), (once,), (uuids[3],)]
    published = sorted(key for key, _ in read_topic_json(kafka_bootstrap, env["topic"]))
    assert published == sorted(str(u) for u in (uuids[0], once, uuids[3]))


def hold_row(pg_url: str, team_id: int, uuid, seconds: float, change: str | None = None) -> threading.Thread:
    """Another writer: locks the person's row for `seconds`, then (optionally) sets key `change` and
    bumps the version, and commits. Returns once the lock is taken."""
    taken = threading.Event()

    def hold() -> None:
        with psycopg.connect(pg_url) as conn:
            conn.execute(
                "SELECT 1 FROM posthog_person WHERE team_id = %s AND uuid = %s FOR UPDATE", (team_id, uuid)
            )
            taken.set()
            time.sleep(seconds)
            if change is not None:
                conn.execute(
                    "UPDATE posthog_person SET version = version + 1, "
                    "properties = properties || jsonb_build_object(%s::text, 'concurrent') "
                    "WHERE team_id = %s AND uuid = %s",
                    (change, team_id, uuid),
                )
            conn.commit()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert taken.wait(10)
    return thread


def test_locked_row_is_waited_for_and_merged_with_the_concurrent_change(env, run_apply, pg_rows, pg_url):
    """Fault 8: a row another transaction holds past the quick retries is waited for at the end of the
    team (bounded by lock_timeout), re-read, and the diff merged on top of the concurrent change."""
    uuids = seed(env, 1, [("plan", '"paid"'), ("plan", '"paid"')], kind="set")
    insert_summary(env["ch"], {1: 2})
    holder = hold_row(pg_url, 1, uuids[0], 2.5, change="other")
    run = run_apply("--job-id", "job-wait", "--output", "json")
    holder.join()
    assert run.exit_code == 0, run.stdout + run.stderr
    assert {line["outcome"] for line in run.persons().values()} == {"success"}
    assert run.summary()["teams"][0]["status"] == "succeeded"
    assert pg_rows("SELECT uuid, properties, version FROM posthog_person ORDER BY uuid") == [
        (uuids[0], {"plan": "paid", "other": "concurrent"}, 4),
        (uuids[1], {"plan": "paid"}, 3),
    ]


def test_row_held_past_lock_timeout_makes_the_team_incomplete(env, run_apply, pg_rows, pg_url):
    """Fault 5: a person whose row stays held (8 s, past the 5 s lock_timeout) is version_conflict, its
    team incomplete (exit 1, listed by `runner report --status failed`); a re-run applies it."""
    uuids = seed(env, 1, [("plan", '"paid"'), ("plan", '"paid"')], kind="set")
    insert_summary(env["ch"], {1: 2})
    holder = hold_row(pg_url, 1, uuids[0], 8)
    run = run_apply("--job-id", "job-held", "--output", "json")
    holder.join()
    assert run.exit_code == 1, run.stdout + run.stderr
    lines = run.persons()
    assert [lines[str(u)]["outcome"] for u in uuids] == ["version_conflict", "success"]
    [team] = run.summary()["teams"]
    assert team["status"] == "incomplete" and "version_conflict" in team["error"]
    assert pg_rows("SELECT status FROM recon_run_team WHERE job_id = 'job-held'") == [("incomplete",)]

    from click.testing import CliRunner

    from runner.cli import main

    report = CliRunner().invoke(
        main, ["report", "--job-id", "job-held", "--status", "failed", "--output", "json"]
    )
    assert report.exit_code == 1
    assert [t["team_id"] for t in json.loads(report.stdout)["listed"]] == [1]

    again = run_apply("--job-id", "job-held", "--output", "json")
    assert again.exit_code == 0, again.stdout + again.stderr
    assert pg_rows("SELECT uuid, version FROM posthog_person ORDER BY uuid") == [(uuids[0], 3), (uuids[1], 3)]
