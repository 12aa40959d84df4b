"""`runner apply` on the real stack: every outcome, backups, outbox, Kafka messages, JSON output."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import psycopg
import pytest
from apply_support import (
    CREATED,
    TS,
    Diff,
    insert_ch_persons,
    insert_diffs,
    insert_pg_person,
    insert_summary,
    new_uuid,
)
from kafka_util import read_topic

from runner.engine.stages import STAGES

pytestmark = pytest.mark.integration

T1 = datetime(2026, 1, 7, 9, 0, tzinfo=UTC)
T2 = datetime(2026, 1, 8, 10, 0, 0, 250000, tzinfo=UTC)

A, B, C, D, E, F, G = (new_uuid(n) for n in range(1, 8))


@pytest.fixture
def scenario(env, pg_url):
    """Team 1 has one person per outcome; team 2 was selected by the models but has nothing to change."""
    ch, pg = env["ch"], env["pg"]
    insert_ch_persons(
        ch,
        [
            (1, A, {"plan": "pro", "legacy": "x", "source": "seo"}, 3),
            (1, B, {"a": 1}, 5),
            (1, C, {"a": 1}, 1),
            (1, D, {"plan": "pro", "legacy": "x"}, 2),
            (1, D, {"plan": "pro", "legacy": "y"}, 4),
            (1, E, {"a": 1}, 3),
            (1, F, {"a": "old"}, 0),
            (1, G, {"x": 0}, 1),
        ],
    )
    insert_pg_person(pg, 1, A, {"plan": "pro", "legacy": "x", "source": "seo"}, 3)
    insert_pg_person(
        pg, 1, B, {"a": 1, "k": "pg"}, 5, last_updated_at={"a": "t"}, last_operation={"a": "set"}
    )
    insert_pg_person(pg, 1, D, {"plan": "pro", "legacy": "y"}, 4, last_updated_at={}, last_operation={})
    insert_pg_person(pg, 1, E, {"a": 1}, 9)
    insert_pg_person(pg, 1, F, {"a": "old"}, None, created_at=datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    insert_pg_person(pg, 1, G, {"x": 0}, 1)
    diffs = [
        Diff(1, A, 3, set={"plan": ('"enterprise"', T2)}, unset={"legacy": T1}),
        Diff(1, B, 5, set_once={"k": ('"ch"', TS)}),
        Diff(1, C, 1, set={"a": ("2", TS)}),
        Diff(1, D, 2, set={"plan": ('"team"', TS)}, unset={"legacy": T1}),
        Diff(1, E, 7, set={"a": ("2", TS)}),  # no ClickHouse row at or above version 7
        Diff(1, F, 0, set={"a": ('"new"', TS)}, set_once={"nested": ('{"b": [1, 2.5, true]}', TS)}),
        Diff(1, G, 1, set={"x": ("1", TS)}),
    ]
    insert_diffs(ch, diffs)
    insert_summary(ch, {1: len(diffs), 2: 0})
    # Another writer holds G's row for the whole run.
    holder = psycopg.connect(pg_url)
    holder.execute("SELECT 1 FROM posthog_person WHERE uuid = %s FOR UPDATE", (G,))
    yield env
    holder.rollback()
    holder.close()


def test_every_outcome_with_backups_outbox_and_kafka(scenario, run_apply, pg_rows, kafka_bootstrap):
    run = run_apply("--job-id", "job-outcomes", "--output", "json")
    # G's row stays held past the end-of-team retry: version_conflict, its team incomplete, exit 1.
    assert run.exit_code == 1, run.stderr
    persons = run.persons()
    assert {uuid: line["outcome"] for uuid, line in persons.items()} == {
        str(A): "success",
        str(B): "no_changes",
        str(C): "not_found",
        str(D): "success",
        str(E): "not_found",
        str(F): "success",
        str(G): "version_conflict",
    }
    summary = run.summary()
    # Where the run's time went (runner.engine.stages): wall and thread CPU seconds per stage.
    stages = summary.pop("stages")
    assert set(stages) == set(STAGES)
    assert all(set(t) == {"seconds", "cpu_seconds"} and min(t.values()) >= 0 for t in stages.values())
    for stage in ("run", "fetch", "lock", "decide", "write", "commit", "publish"):
        assert stages[stage]["seconds"] > 0, stage
    assert stages["run"]["seconds"] >= stages["decide"]["seconds"]
    assert summary == {
        "type": "summary",
        "job_id": "job-outcomes",
        "dry_run": False,
        "semantics": "original",
        "teams": [
            {
                "team_id": 1,
                "status": "incomplete",
                "error": "incomplete: persons not applied: 1 version_conflict",
                "processed": 7,
                "updated": 3,
                "skipped": 4,
                "commits": 1,
                "outcomes": {
                    "success": 3,
                    "no_changes": 1,
                    "not_found": 2,
                    "version_conflict": 1,
                    "invalid_value": 0,
                    "team_failed": 0,
                },
                "failures": [
                    {
                        "person_uuid": str(G),
                        "outcome": "version_conflict",
                        "reason": "another transaction held the row past lock_timeout",
                    }
                ],
            },
            {
                "team_id": 2,
                "status": "succeeded",
                "error": None,
                "processed": 0,
                "updated": 0,
                "skipped": 0,
                "commits": 0,
                "outcomes": {
                    "success": 0,
                    "no_changes": 0,
                    "not_found": 0,
                    "version_conflict": 0,
                    "invalid_value": 0,
                    "team_failed": 0,
                },
                "failures": [],
            },
        ],
        "processed": 7,
        "updated": 3,
        "skipped": 4,
        "quarantined": 0,
        "quarantine_note": None,
    }

    # Simple merge (R9.4) with the R9.7 metadata; the three-way merge keeps Postgres's legacy = "y".
    state = {
        row[0]: row[1:]
        for row in pg_rows(
            "SELECT uuid, properties, properties_last_updated_at, properties_last_operation, version "
            "FROM posthog_person"
        )
    }
    assert state[A] == (
        {"plan": "enterprise", "source": "seo"},
        {"plan": "2026-01-08T10:00:00.250000+00:00"},
        {"plan": "set"},
        4,
    )
    assert state[B] == ({"a": 1, "k": "pg"}, {"a": "t"}, {"a": "set"}, 5)
    assert state[D] == (
        {"plan": "team", "legacy": "y"},
        {"plan": "2026-01-07T09:00:00+00:00"},
        {"plan": "set"},
        5,
    )
    assert state[E][3] == 9
    assert state[F] == (
        {"a": "new", "nested": {"b": [1, 2.5, True]}},
        {"a": "2026-01-07T09:00:00+00:00", "nested": "2026-01-07T09:00:00+00:00"},
        {"a": "set", "nested": "set_once"},
        1,
    )
    assert state[G] == ({"x": 0}, None, None, 1)

    # JSON lines carry the decoded diff and before/after states.
    line_a = persons[str(A)]
    assert line_a == {
        "type": "person",
        "team_id": 1,
        "person_uuid": str(A),
        "outcome": "success",
        "ch_version": 3,
        "set": {"plan": "enterprise"},
        "set_once": {},
        "unset": ["legacy"],
        "timestamps": {
            "set": {"plan": "2026-01-08T10:00:00.250000+00:00"},
            "set_once": {},
            "unset": {"legacy": "2026-01-07T09:00:00+00:00"},
        },
        "properties_before": {"plan": "pro", "legacy": "x", "source": "seo"},
        "properties_after": {"plan": "enterprise", "source": "seo"},
        "version_before": 3,
        "version_after": 4,
        "reason": None,
    }
    assert persons[str(F)]["version_before"] is None and persons[str(F)]["version_after"] == 1
    assert persons[str(F)]["set_once"] == {"nested": {"b": [1, 2.5, True]}}
    assert persons[str(C)]["properties_before"] is None and persons[str(C)]["version_after"] is None
    assert persons[str(B)]["properties_after"] == {"a": 1, "k": "pg"}

    # Backups (R9.8, R9.9): PostHog's columns, BEFORE as read (NULL metadata as JSON null), AFTER as written.
    backups = {
        row[0]: row[1:]
        for row in pg_rows(
            "SELECT uuid, job_id, team_id, properties, properties_last_updated_at, "
            "properties_last_operation, version, is_identified, created_at, pending_operations, "
            "properties_after, "
            "properties_last_updated_at_after, properties_last_operation_after, version_after, "
            "person_id = (SELECT id FROM posthog_person p WHERE p.uuid = b.uuid) "
            "FROM posthog_person_reconciliation_backup b"
        )
    }
    assert set(backups) == {A, D, F}
    assert backups[A] == (
        "job-outcomes",
        1,
        {"plan": "pro", "legacy": "x", "source": "seo"},
        None,  # JSON null (the driver reads 'null'::jsonb as None)
        None,
        3,
        True,
        CREATED,
        [
            {
                "key": "plan",
                "value": "enterprise",
                "timestamp": "2026-01-08T10:00:00.250000+00:00",
                "operation": "set",
            },
            {"key": "legacy", "value": None, "timestamp": "2026-01-07T09:00:00+00:00", "operation": "unset"},
        ],
        {"plan": "enterprise", "source": "seo"},
        {"plan": "2026-01-08T10:00:00.250000+00:00"},
        {"plan": "set"},
        4,
        True,
    )
    null_metadata = pg_rows(
        "SELECT jsonb_typeof(properties_last_updated_at), properties_last_updated_at IS NULL "
        "FROM posthog_person_reconciliation_backup WHERE uuid = %s",
        (A,),
    )
    assert null_metadata == [("null", False)]
    assert backups[D][5] == 4 and backups[D][12] == 5  # three-way: target is the Postgres version
    assert backups[F][5] is None and backups[F][12] == 1

    # Outbox: one row per updated person, all published; Kafka: the §2.7 message keyed by person uuid.
    outbox = pg_rows(
        "SELECT person_uuid, version, published_at IS NOT NULL FROM recon_outbox_status ORDER BY id"
    )
    # (In id order the set-based write's persons come first, then the chunk's per-person ones: D, the
    # three-way merge, after F.)
    assert sorted(outbox) == [(A, 4, True), (D, 5, True), (F, 1, True)]
    messages = read_topic(kafka_bootstrap, scenario["topic"])
    assert sorted(m.key().decode() for m in messages) == sorted([str(A), str(D), str(F)])
    by_key = {m.key().decode(): m.value().decode() for m in messages}
    assert by_key[str(A)] == json.dumps(
        {
            "id": str(A),
            "team_id": 1,
            "properties": json.dumps({"plan": "enterprise", "source": "seo"}),
            "is_identified": 1,
            "is_deleted": 0,
            "created_at": "2025-11-03 10:20:30.123000",
            "version": 4,
        }
    )
    assert json.loads(by_key[str(F)])["created_at"] == "2025-06-01 12:00:00.000000"
    assert json.loads(json.loads(by_key[str(D)])["properties"]) == {"plan": "team", "legacy": "y"}

    # Ledger: job, config, per-team status, counts by outcome, commits, timings.
    run_row = pg_rows("SELECT kind, status, dry_run, config, finished_at IS NOT NULL FROM recon_run")
    assert run_row[0][:3] == ("apply", "failed", False) and run_row[0][4]
    assert run_row[0][3]["batch_size"] == 100 and run_row[0][3]["backup_enabled"] is True
    teams = pg_rows(
        "SELECT team_id, status, processed, updated, skipped, outcomes, commits, "
        "duration_seconds IS NOT NULL "
        "FROM recon_run_team WHERE job_id = 'job-outcomes' ORDER BY team_id"
    )
    assert teams[0][:5] == (1, "incomplete", 7, 3, 4)
    assert teams[0][5] == {
        "success": 3,
        "no_changes": 1,
        "not_found": 2,
        "version_conflict": 1,
        "invalid_value": 0,
        "team_failed": 0,
        "already_applied": 0,
        "failures": [
            {
                "person_uuid": str(G),
                "outcome": "version_conflict",
                "reason": "another transaction held the row past lock_timeout",
            }
        ],
    }
    assert teams[0][6:] == (1, True)
    assert teams[1][:5] == (2, "succeeded", 0, 0, 0)

    # Metrics with the original's names and labels (R11.5).
    metrics = (
        scenario["ch"]
        .query("SELECT name, labels, increment FROM posthog.custom_metrics_counter_events ORDER BY name")
        .result_rows
    )
    values = {name: (labels, value) for name, labels, value in metrics}
    labels = {"job_name": "person_property_reconciliation_job", "chunk_id": "teams_1_2"}
    assert values["person_property_reconciliation_persons_processed_total"] == (labels, 7.0)
    assert values["person_property_reconciliation_persons_updated_total"] == (labels, 3.0)
    assert values["person_property_reconciliation_persons_skipped_total"] == (labels, 4.0)
    # The incomplete team counts as failed (R11.5 knows no third state), with its error counter.
    assert values["person_property_reconciliation_teams_succeeded_total"] == (labels, 1.0)
    assert values["person_property_reconciliation_teams_failed_total"] == (labels, 1.0)
    assert "person_property_reconciliation_duration_seconds_total" in values
    assert values["person_property_reconciliation_error"] == (
        {**labels, "team_id": "1", "reason": "error"},
        1.0,
    )

    # Logs (stderr) warn about not_found and version_conflict persons, naming them (R9.16).
    assert f"Person {C} of team 1: not_found" in run.stderr
    assert f"Person {G} of team 1: version_conflict" in run.stderr


def test_second_run_of_the_same_job_changes_and_publishes_nothing(
    scenario, run_apply, pg_rows, kafka_bootstrap
):
    first = run_apply("--job-id", "job-twice", "--output", "json")
    assert first.exit_code == 1, first.stderr  # G stays held: version_conflict
    snapshot = pg_rows("SELECT uuid, properties, version FROM posthog_person ORDER BY uuid")
    backups = pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup")
    messages = len(read_topic(kafka_bootstrap, scenario["topic"]))

    second = run_apply("--job-id", "job-twice", "--output", "json")
    assert second.exit_code == 1, second.stderr
    assert pg_rows("SELECT uuid, properties, version FROM posthog_person ORDER BY uuid") == snapshot
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup") == backups
    assert pg_rows("SELECT count(*) FROM recon_outbox") == [(3,)]
    assert len(read_topic(kafka_bootstrap, scenario["topic"])) == messages
    # The job's counts are the same: what it applied before is reported as its update, not redone.
    assert second.summary()["updated"] == first.summary()["updated"] == 3
    assert second.summary()["teams"][0]["commits"] == 0
    line_a = second.persons()[str(A)]
    assert line_a["outcome"] == "success" and line_a["version_after"] == 4
    assert line_a["properties_after"] == {"plan": "enterprise", "source": "seo"}
    assert pg_rows("SELECT outcomes->>'already_applied' FROM recon_run_team WHERE team_id = 1") == [("3",)]


def test_dry_run_writes_nothing(scenario, run_apply, pg_rows, kafka_bootstrap):
    def everything():
        return {
            table: pg_rows(f"SELECT * FROM {table} ORDER BY 1")
            for table in (
                "posthog_person",
                "posthog_person_reconciliation_backup",
                "recon_outbox",
                "recon_run",
                "recon_run_team",
            )
        }

    before = everything()
    run = run_apply("--dry-run", "--job-id", "job-dry", "--sample", "2")
    assert run.exit_code == 0, run.stderr
    assert everything() == before
    assert read_topic(kafka_bootstrap, scenario["topic"]) == []
    assert scenario["ch"].query("SELECT count() FROM posthog.custom_metrics_counter_events").result_rows == [
        (0,)
    ]

    out = run.stdout
    assert "dry run" in out
    header = next(line for line in out.splitlines() if line.startswith("team  "))
    assert header.split()[:8] == ["team", "status", "processed", "would", "update", "no", "change", "not"]
    row = next(line for line in out.splitlines() if line.startswith("1 "))
    # team, status, processed, would update, no change, not found, conflict, failed, commits
    assert row.split()[:9] == ["1", "succeeded", "7", "4", "1", "2", "0", "0", "0"]
    assert "team 1: sample of the persons it would update" in out
    assert f"person {A}: version 3 -> 4" in out
    assert 'before: {"legacy": "x", "plan": "pro", "source": "seo"}' in out
    assert 'after:  {"plan": "enterprise", "source": "seo"}' in out


def test_dry_run_json_reports_would_be_updates_as_skipped(scenario, run_apply):
    run = run_apply("--dry-run", "--output", "json")
    assert run.exit_code == 0, run.stderr
    summary = run.summary()
    assert summary["dry_run"] is True
    assert (summary["processed"], summary["updated"], summary["skipped"]) == (7, 0, 7)
    persons = run.persons()
    assert persons[str(A)]["outcome"] == "success" and persons[str(A)]["version_after"] == 4
    # Without locks a dry run cannot see the other writer's lock: G would be updated.
    assert persons[str(G)]["outcome"] == "success"
    assert all(line["type"] in ("person", "summary") for line in run.json_lines())


def test_no_backup(scenario, run_apply, pg_rows):
    run = run_apply("--no-backup", "--job-id", "job-nb", "--output", "json")
    assert run.exit_code == 1, run.stderr  # G stays held: version_conflict
    assert run.summary()["updated"] == 3
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup") == [(0,)]
    assert pg_rows("SELECT count(*) FROM recon_outbox_status WHERE published_at IS NOT NULL") == [(3,)]
    again = run_apply("--no-backup", "--job-id", "job-nb", "--output", "json")
    assert again.summary()["teams"][0]["commits"] == 0
    assert pg_rows("SELECT version FROM posthog_person WHERE uuid = %s", (A,)) == [(4,)]


def test_keys_with_special_characters(env, run_apply, pg_rows):
    """Keys with quotes, backslashes, commas, braces and non-ASCII are set and unset exactly, in the
    properties and in both metadata maps (the removal list travels as a text[] literal)."""
    weird = ['a"b', "c\\d", "e,f", "{g}", "Zoë 日本", " ", "NULL"]
    person = new_uuid(42)
    props = {key: "old" for key in weird} | {"keep": 1}
    insert_ch_persons(env["ch"], [(1, person, props, 2)])
    insert_pg_person(
        env["pg"],
        1,
        person,
        props,
        2,
        last_updated_at={key: "t" for key in [*weird, "keep"]},
        last_operation={key: "set" for key in [*weird, "keep"]},
    )
    set_key = 'new"key\\'
    insert_diffs(
        env["ch"],
        [Diff(1, person, 2, set={set_key: ('"v"', TS)}, unset={key: TS for key in weird})],
    )
    insert_summary(env["ch"], {1: 1})
    run = run_apply("--job-id", "job-weird", "--output", "json")
    assert run.exit_code == 0, run.stderr
    [(properties, updated, operation, version)] = pg_rows(
        "SELECT properties, properties_last_updated_at, properties_last_operation, version "
        "FROM posthog_person"
    )
    assert properties == {"keep": 1, set_key: "v"}
    assert updated == {"keep": "t", set_key: "2026-01-07T09:00:00+00:00"}
    assert operation == {"keep": "set", set_key: "set"}
    assert version == 3
    [(pending,)] = pg_rows("SELECT pending_operations FROM posthog_person_reconciliation_backup")
    assert [op["key"] for op in pending] == [set_key, *weird]


def test_postgres_behind_clickhouse_writes_a_version_clickhouse_accepts(
    env, run_apply, pg_rows, kafka_bootstrap
):
    """Gotcha 19: Postgres at version 2 (or NULL) while ClickHouse holds 6. The original wrote
    `pg_version + 1`, which ClickHouse drops; the repair must land above the ClickHouse version."""
    ch, pg = env["ch"], env["pg"]
    behind, null_version = new_uuid(21), new_uuid(22)
    insert_ch_persons(ch, [(1, behind, {"plan": "pro"}, 6), (1, null_version, {"plan": "pro"}, 4)])
    insert_pg_person(pg, 1, behind, {"plan": "pro"}, 2)
    insert_pg_person(pg, 1, null_version, {"plan": "pro"}, None)
    insert_diffs(
        ch,
        [
            Diff(1, behind, 6, set={"plan": ('"team"', TS)}),
            Diff(1, null_version, 4, set={"plan": ('"team"', TS)}),
        ],
    )
    insert_summary(ch, {1: 2})
    run = run_apply("--job-id", "job-behind", "--output", "json")
    assert run.exit_code == 0, run.stderr
    lines = run.persons()
    assert lines[str(behind)]["version_after"] == 7
    assert lines[str(null_version)]["version_after"] == 5
    assert pg_rows("SELECT uuid, properties->>'plan', version FROM posthog_person ORDER BY version") == [
        (null_version, "team", 5),
        (behind, "team", 7),
    ]
    versions = {
        json.loads(m.value())["id"]: json.loads(m.value())["version"]
        for m in read_topic(kafka_bootstrap, env["topic"])
    }
    assert versions == {str(behind): 7, str(null_version): 5}
