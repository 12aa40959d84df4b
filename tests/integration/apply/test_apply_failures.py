"""A failing team is reported and rolled back while the others go on; bad configuration exits 2 having
written nothing; unpublished messages of earlier runs are published before new work."""

from __future__ import annotations

import json

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
from targets_util import use_targets

pytestmark = pytest.mark.integration


def seed_team(env, team_id: int, n: int, *, poisoned: int | None = None) -> list:
    """n persons with one SET each; writing the `poisoned` one makes a trigger raise (an error no
    single value explains): its batch fails."""
    uuids = [new_uuid(team_id * 100 + i) for i in range(n)]
    insert_ch_persons(env["ch"], [(team_id, u, {"plan": "free"}, 2) for u in uuids])
    for u in uuids:
        insert_pg_person(env["pg"], team_id, u, {"plan": "free"}, 2)
    insert_diffs(env["ch"], [Diff(team_id, u, 2, set={"plan": ('"paid"', TS)}) for u in uuids])
    if poisoned is not None:
        env["pg"].execute(
            "CREATE OR REPLACE FUNCTION apply_test_reject() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$BEGIN IF NEW.uuid = '{uuids[poisoned]}' THEN RAISE EXCEPTION 'apply_test_reject'; END IF; "
            "RETURN NEW; END$$; "
            "CREATE TRIGGER apply_test_reject BEFORE UPDATE ON posthog_person "
            "FOR EACH ROW EXECUTE FUNCTION apply_test_reject()"
        )
    return uuids


def test_failing_team_is_rolled_back_and_reported_while_others_continue(
    env, run_apply, pg_rows, kafka_bootstrap
):
    seed_team(env, 1, 2)
    team2 = seed_team(env, 2, 4, poisoned=3)
    seed_team(env, 3, 1)
    insert_summary(env["ch"], {1: 2, 2: 4, 3: 1})

    run = run_apply("--job-id", "job-fail", "--batch-size", "2", "--output", "json")
    assert run.exit_code == 1
    summary = run.summary()
    teams = {t["team_id"]: t for t in summary["teams"]}
    assert teams[1]["status"] == teams[3]["status"] == "succeeded"
    assert teams[2]["status"] == "failed" and "apply_test_reject" in teams[2]["error"]
    # The first batch of team 2 was committed and published; its second batch was rolled back: its two
    # persons are team_failed, handled by nobody (neither processed nor skipped).
    assert (teams[2]["processed"], teams[2]["updated"], teams[2]["skipped"], teams[2]["commits"]) == (
        2,
        2,
        0,
        1,
    )
    assert teams[2]["outcomes"]["team_failed"] == 2
    lines = run.persons()
    assert [lines[str(u)]["outcome"] for u in team2] == ["success", "success", "team_failed", "team_failed"]
    assert lines[str(team2[2])]["properties_after"] is None and lines[str(team2[2])]["version_after"] is None
    versions = dict(pg_rows("SELECT uuid, version FROM posthog_person WHERE team_id = 2"))
    assert [versions[u] for u in team2] == [3, 3, 2, 2]
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup WHERE team_id = 2") == [(2,)]
    assert pg_rows("SELECT count(*), bool_and(published_at IS NOT NULL) FROM recon_outbox_status") == [
        (5, True)
    ]
    published = {key for key, _ in read_topic_json(kafka_bootstrap, env["topic"])}
    assert published == {str(u) for u in team2[:2]} | {
        str(new_uuid(100)),
        str(new_uuid(101)),
        str(new_uuid(300)),
    }

    ledger = pg_rows("SELECT team_id, status, error IS NOT NULL FROM recon_run_team ORDER BY team_id")
    assert ledger == [(1, "succeeded", False), (2, "failed", True), (3, "succeeded", False)]
    assert pg_rows("SELECT status FROM recon_run") == [("failed",)]
    errors = (
        env["ch"]
        .query(
            "SELECT labels FROM posthog.custom_metrics_counter_events "
            "WHERE name = 'person_property_reconciliation_error'"
        )
        .result_rows
    )
    assert errors == [
        (
            {
                "job_name": "person_property_reconciliation_job",
                "chunk_id": "teams_1_3",
                "team_id": "2",
                "reason": "error",
            },
        )
    ]
    assert "Team 2 failed" in run.stderr

    # Re-running the job (after fixing the data) resumes: team 2's committed persons are not redone.
    env["ch"].command(
        "ALTER TABLE recon.person_property_diff DELETE WHERE team_id = 2 AND person_id = %(p)s",
        parameters={"p": team2[3]},
        settings={"mutations_sync": 2},
    )
    again = run_apply("--job-id", "job-fail", "--batch-size", "2", "--team-id", "2", "--output", "json")
    assert again.exit_code == 0, again.stderr
    assert [again.persons()[str(u)]["outcome"] for u in team2[:3]] == ["success"] * 3
    assert again.summary()["teams"][0]["commits"] == 1  # only the third person was written
    assert pg_rows("SELECT status FROM recon_run_team WHERE team_id = 2") == [("succeeded",)]


def test_team_failing_before_any_person_is_applied_counts_no_person(env, run_apply, pg_rows):
    """A team whose only batch fails (nothing of it written) adds 0 to the processed and skipped counts
    of its team, of the job and of the metrics: its persons are `team_failed`, not handled."""
    seed_team(env, 1, 1)
    team2 = seed_team(env, 2, 1, poisoned=0)
    insert_summary(env["ch"], {1: 1, 2: 1})

    run = run_apply("--job-id", "job-whole", "--output", "json")
    assert run.exit_code == 1
    summary = run.summary()
    teams = {t["team_id"]: t for t in summary["teams"]}
    assert teams[2]["status"] == "failed" and "apply_test_reject" in teams[2]["error"]
    assert teams[2]["outcomes"]["team_failed"] == 1
    counts = ("processed", "updated", "skipped", "commits")
    assert [teams[2][c] for c in counts] == [0, 0, 0, 0]
    assert (summary["processed"], summary["updated"], summary["skipped"]) == (1, 1, 0)
    assert run.persons()[str(team2[0])]["outcome"] == "team_failed"
    assert pg_rows("SELECT processed, updated, skipped FROM recon_run_team WHERE team_id = 2") == [(0, 0, 0)]
    assert pg_rows("SELECT count(*) FROM posthog_person WHERE team_id = 2 AND version <> 2") == [(0,)]
    metrics = dict(
        env["ch"]
        .query(
            "SELECT name, increment FROM posthog.custom_metrics_counter_events "
            "WHERE name LIKE 'person_property_reconciliation_persons_%'"
        )
        .result_rows
    )
    assert metrics["person_property_reconciliation_persons_processed_total"] == 1.0
    assert metrics["person_property_reconciliation_persons_skipped_total"] == 0.0


def test_unpublished_messages_of_earlier_runs_are_published_first(env, run_apply, pg_rows, kafka_bootstrap):
    seed_team(env, 1, 1)
    insert_summary(env["ch"], {1: 1})
    left = new_uuid(999)
    payload = json.dumps({"id": str(left), "team_id": 9, "version": 7})
    env["pg"].execute(
        "INSERT INTO recon_outbox (job_id, team_id, person_uuid, version, payload) "
        "VALUES ('old-job', 9, %s, 7, %s)",
        (left, payload),
    )
    run = run_apply("--job-id", "job-new")
    assert run.exit_code == 0, run.stderr
    assert "published 1 messages left unpublished by earlier runs" in run.stdout
    assert run.stderr.index("unpublished outbox messages left by earlier runs") < run.stderr.index("Team 1:")
    assert pg_rows("SELECT job_id, published_at IS NOT NULL FROM recon_outbox_status ORDER BY id") == [
        ("old-job", True),
        ("job-new", True),
    ]
    messages = read_topic_json(kafka_bootstrap, env["topic"])
    assert (str(left), {"id": str(left), "team_id": 9, "version": 7}) in messages


def _nothing_written(pg_rows) -> None:
    for table in ("recon_run", "recon_run_team", "recon_outbox", "posthog_person_reconciliation_backup"):
        assert pg_rows(f"SELECT count(*) FROM {table}") == [(0,)], table
    assert pg_rows("SELECT count(*) FROM posthog_person WHERE version <> 2") == [(0,)]


def test_unknown_team_exits_2_and_writes_nothing(env, run_apply, pg_rows):
    seed_team(env, 1, 1)
    insert_summary(env["ch"], {1: 1})
    run = run_apply("--team-id", "1", "--team-id", "77")
    assert run.exit_code == 2
    assert "unknown team id(s) [77]" in run.stderr
    _nothing_written(pg_rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "-1"], "--batch-size"),
        (["--page-size", "0"], "--page-size"),
        (["--job-id", "bad id"], "--job-id"),
        (["--output", "xml"], "--output"),
    ],
)
def test_bad_options_exit_2(env, run_apply, pg_rows, args, message):
    seed_team(env, 1, 1)
    insert_summary(env["ch"], {1: 1})
    run = run_apply(*args)
    assert run.exit_code == 2 and message in run.stderr
    _nothing_written(pg_rows)


def test_unreachable_postgres_or_kafka_exit_2(env, run_apply, pg_rows, monkeypatch, pg_url, kafka_bootstrap):
    seed_team(env, 1, 1)
    insert_summary(env["ch"], {1: 1})
    use_targets(monkeypatch, postgres="postgresql://postgres@127.0.0.1:1/posthog", kafka=kafka_bootstrap)
    run = run_apply()
    assert run.exit_code == 2 and "cannot connect to Postgres" in run.stderr
    use_targets(monkeypatch, postgres=pg_url, kafka="127.0.0.1:1")
    run = run_apply()
    assert run.exit_code == 2 and "Kafka at 127.0.0.1:1 is unreachable" in run.stderr
    _nothing_written(pg_rows)


def test_missing_diff_tables_exit_2(env, run_apply):
    env["ch"].command("DROP TABLE recon.person_property_diff_summary")
    run = run_apply()
    assert run.exit_code == 2 and "person_property_diff_summary does not exist" in run.stderr


def test_help_shows_every_option_with_its_env_var(run_apply):
    run = run_apply("--help")
    assert run.exit_code == 0
    for option, var in [
        ("--dry-run", "RECON_DRY_RUN"),
        ("--job-id", "RECON_JOB_ID"),
        ("--team-id", "RECON_TEAM_IDS"),
        ("--batch-size", "RECON_BATCH_SIZE"),
        ("--page-size", "RECON_PAGE_SIZE"),
        ("--no-backup", "RECON_BACKUP_ENABLED"),
        ("--output", "RECON_OUTPUT"),
        ("--sample", "RECON_SAMPLE"),
        ("--publish-timeout", "RECON_PUBLISH_TIMEOUT"),
    ]:
        assert option in run.stdout and var in run.stdout
