"""`runner restore` on the real stack: apply a job with `runner apply`, then undo it.

The data helpers and fixtures of the apply tests (tests/integration/apply) are reused: `apply_support`
for the diff tables and persons, its conftest for the per-test ClickHouse reset, Kafka topic and the
in-process `runner apply`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from kafka_util import read_topic, read_topic_json

from runner.cli import main
from runner.config import faults

pytestmark = pytest.mark.integration

_APPLY_TESTS = Path(__file__).resolve().parent / "apply"
if str(_APPLY_TESTS) not in sys.path:
    sys.path.insert(0, str(_APPLY_TESTS))
support = importlib.import_module("apply_support")


def _load_apply_fixtures() -> Any:
    spec = importlib.util.spec_from_file_location(
        "restore_tests_apply_fixtures", _APPLY_TESTS / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _load_apply_fixtures()
ch = _fixtures.ch
topic = _fixtures.topic
env = _fixtures.env
pg_rows = _fixtures.pg_rows
run_apply = _fixtures.run_apply
subprocess_env = _fixtures.subprocess_env
_no_fault_env = _fixtures._no_fault_env
ApplyRun = _fixtures.ApplyRun

T_SET = datetime(2026, 1, 8, 10, 0, 0, 250000, tzinfo=UTC)
T_OLD = "2025-12-01T08:00:00+00:00"
A, B, C, E = (support.new_uuid(n) for n in (11, 12, 13, 21))

STATE_SQL = (
    "SELECT uuid, properties, properties_last_updated_at, properties_last_operation, version "
    "FROM posthog_person ORDER BY uuid"
)


@pytest.fixture
def applied(env, run_apply, pg_rows):
    """Team 1: A (SET + UNSET), B (SET_ONCE adds a key), C (NULL metadata and version); team 2: E.
    Job `job-a` is applied; returns the Postgres states before and after it."""
    ch, pg = env["ch"], env["pg"]
    support.insert_ch_persons(
        ch,
        [
            (1, A, {"plan": "pro", "legacy": "x", "source": "seo"}, 3),
            (1, B, {"a": 1}, 5),
            (1, C, {"a": 1}, 0),
            (2, E, {"x": "old"}, 2),
        ],
    )
    ids = {
        A: support.insert_pg_person(
            pg,
            1,
            A,
            {"plan": "pro", "legacy": "x", "source": "seo"},
            3,
            last_updated_at={"plan": T_OLD, "legacy": T_OLD},
            last_operation={"plan": "set", "legacy": "set_once"},
        ),
        B: support.insert_pg_person(
            pg, 1, B, {"a": 1}, 5, last_updated_at={"a": T_OLD}, last_operation={"a": "set"}
        ),
        C: support.insert_pg_person(pg, 1, C, {"a": 1}, None),
        E: support.insert_pg_person(pg, 2, E, {"x": "old"}, 2, last_updated_at={}, last_operation={}),
    }
    support.insert_diffs(
        ch,
        [
            support.Diff(1, A, 3, set={"plan": ('"enterprise"', T_SET)}, unset={"legacy": support.TS}),
            support.Diff(1, B, 5, set_once={"ref": ('"ads"', support.TS)}),
            support.Diff(1, C, 0, set={"a": ("2", support.TS)}),
            support.Diff(2, E, 2, set={"x": ('"new"', support.TS)}),
        ],
    )
    support.insert_summary(ch, {1: 3, 2: 1})
    before = state(pg_rows)
    run = run_apply("--job-id", "job-a", "--output", "json")
    assert run.exit_code == 0, run.stderr
    assert run.summary()["updated"] == 4
    return {**env, "before": before, "after": state(pg_rows), "ids": ids}


def state(pg_rows) -> dict:
    return {row[0]: row[1:] for row in pg_rows(STATE_SQL)}


def run_restore(*args: str):
    faults.reset()
    result = CliRunner().invoke(main, ["restore", *args], catch_exceptions=False)
    return ApplyRun(result.exit_code, result.stdout, result.stderr)


def messages_of(bootstrap: str, topic_name: str, versions: dict) -> dict:
    """Person messages whose version is the one given for their key: {uuid: message}."""
    found: dict = {}
    for key, value in read_topic_json(bootstrap, topic_name):
        if versions.get(key) == value["version"]:
            assert key not in found, f"{key} published twice at version {value['version']}"
            found[key] = value
    return found


def everything(pg_rows) -> dict:
    return {
        table: pg_rows(f"SELECT * FROM {table} ORDER BY 1, 2")
        for table in (
            "posthog_person",
            "posthog_person_reconciliation_backup",
            "recon_outbox",
            "recon_run",
            "recon_run_team",
        )
    }


def test_apply_then_restore_returns_every_person_to_before(applied, pg_rows, kafka_bootstrap):
    run = run_restore(
        "--job-id", "job-a", "--restore-job-id", "undo-a", "--batch-size", "2", "--backup-batch-size", "2",
        "--output", "json",
    )  # fmt: skip
    assert run.exit_code == 0, run.stderr
    before, after, now = applied["before"], applied["after"], state(pg_rows)
    for person in (A, B, E):
        assert now[person][:3] == before[person][:3]
        assert now[person][3] == after[person][3] + 1
    # The key the run added is removed again (the original's keep_newer kept it); NULL metadata comes
    # back as empty maps.
    assert "ref" not in now[B][0]
    assert now[C] == ({"a": 1}, {}, {}, 2) and before[C] == ({"a": 1}, None, None, None)

    lines = run.json_lines()
    assert [line["type"] for line in lines] == ["person"] * 4 + ["summary"]
    assert lines[0] == {
        "type": "person",
        "team_id": 1,
        "person_id": applied["ids"][A],
        "person_uuid": str(A),
        "outcome": "restored",
        "properties_before": {"plan": "enterprise", "source": "seo"},
        "properties_after": {"plan": "pro", "source": "seo", "legacy": "x"},
        "version_before": 4,
        "version_after": 5,
        "reason": None,
    }
    summary = run.summary()
    assert {
        k: summary[k] for k in ("job_id", "restore_job_id", "strategy", "dry_run", "processed", "restored")
    } == {
        "job_id": "job-a",
        "restore_job_id": "undo-a",
        "strategy": "keep_newer",
        "dry_run": False,
        "processed": 4,
        "restored": 4,
    }
    teams = [
        (t["team_id"], t["status"], t["processed"], t["restored"], t["skipped"], t["commits"])
        for t in summary["teams"]
    ]
    assert teams == [(1, "succeeded", 3, 3, 0, 2), (2, "succeeded", 1, 1, 0, 1)]

    # The restore's own backups: BEFORE = the applied state, AFTER = the restored one.
    backup = pg_rows(
        "SELECT properties, properties_after, properties_last_updated_at_after, version, version_after, "
        "pending_operations FROM posthog_person_reconciliation_backup WHERE job_id = 'undo-a' AND uuid = %s",
        (A,),
    )
    assert backup[0][:5] == (after[A][0], before[A][0], before[A][1], 4, 5)
    assert sorted((op["key"], op["operation"], op["value"]) for op in backup[0][5]) == [
        ("legacy", "set", "x"),
        ("plan", "set", "pro"),
    ]
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup WHERE job_id = 'undo-a'") == [
        (4,)
    ]

    # Outbox and Kafka: each restored person once, keyed by uuid, §2.7 format with the new version.
    assert pg_rows(
        "SELECT count(*), count(published_at) FROM recon_outbox_status WHERE job_id = 'undo-a'"
    ) == [(4, 4)]
    restored = messages_of(kafka_bootstrap, applied["topic"], {str(p): now[p][3] for p in (A, B, C, E)})
    assert set(restored) == {str(A), str(B), str(C), str(E)}
    raw = [
        m.value().decode()
        for m in read_topic(kafka_bootstrap, applied["topic"])
        if m.key() == str(A).encode() and json.loads(m.value())["version"] == 5
    ]
    # The properties are the text of the jsonb Postgres now holds (its key order).
    assert raw == [
        json.dumps(
            {
                "id": str(A),
                "team_id": 1,
                "properties": '{"plan": "pro", "legacy": "x", "source": "seo"}',
                "is_identified": 1,
                "is_deleted": 0,
                "created_at": "2025-11-03 10:20:30.123000",
                "version": 5,
            }
        )
    ]

    # Ledger and metrics (R13.7: one task per team).
    assert pg_rows(
        "SELECT kind, status, config->>'source_job_id' FROM recon_run WHERE job_id = 'undo-a'"
    ) == [("restore", "succeeded", "job-a")]
    assert pg_rows(
        "SELECT team_id, status, processed, updated, commits FROM recon_run_team WHERE job_id = 'undo-a' "
        "ORDER BY team_id"
    ) == [(1, "succeeded", 3, 3, 2), (2, "succeeded", 1, 1, 1)]
    counters = {
        (name, labels["chunk_id"]): value
        for name, labels, value in applied["ch"]
        .query(
            "SELECT name, labels, increment FROM posthog.custom_metrics_counter_events "
            "WHERE name LIKE 'person_property_restore_%'"
        )
        .result_rows
    }
    assert counters[("person_property_restore_persons_restored_total", "team_1")] == 3
    assert counters[("person_property_restore_persons_processed_total", "team_2")] == 1
    assert counters[("person_property_restore_persons_skipped_total", "team_2")] == 0
    assert ("person_property_restore_duration_seconds_total", "team_1") in counters


def test_rerunning_the_same_restore_job_changes_and_publishes_nothing(applied, pg_rows, kafka_bootstrap):
    first = run_restore("--job-id", "job-a", "--restore-job-id", "undo-twice", "--output", "json")
    assert first.exit_code == 0, first.stderr
    snapshot = everything(pg_rows)
    published = len(read_topic(kafka_bootstrap, applied["topic"]))

    second = run_restore("--job-id", "job-a", "--restore-job-id", "undo-twice", "--output", "json")
    assert second.exit_code == 0, second.stderr
    assert everything(pg_rows)["posthog_person"] == snapshot["posthog_person"]
    assert pg_rows("SELECT count(*) FROM posthog_person_reconciliation_backup") == [(8,)]
    assert pg_rows("SELECT count(*) FROM recon_outbox") == [(8,)]
    assert len(read_topic(kafka_bootstrap, applied["topic"])) == published
    summary = second.summary()
    assert (summary["restored"], summary["teams"][0]["already_restored"], summary["teams"][0]["commits"]) == (
        4,
        3,
        0,
    )
    assert second.persons()[str(A)]["outcome"] == "restored"
    assert second.persons()[str(A)]["version_after"] == 5

    # A new restore job of the same source finds nothing left to restore.
    third = run_restore("--job-id", "job-a", "--output", "json")
    assert third.exit_code == 0, third.stderr
    assert {line["outcome"] for line in third.persons().values()} == {"skipped"}
    assert third.summary()["restore_job_id"].startswith("restore-job-a-")


@pytest.mark.parametrize(
    ("strategy", "expected_a"),
    [
        # plan was changed by someone after the run: kept; legacy (removed by the run) comes back
        ("keep_newer", {"plan": "team", "source": "user", "legacy": "x", "new": 1}),
        # every key the run touched goes back; keys the run never touched (source) keep later edits
        ("restore_wins", {"plan": "pro", "source": "user", "legacy": "x", "new": 1}),
        # the backup verbatim
        ("full_overwrite", {"plan": "pro", "legacy": "x", "source": "seo"}),
    ],
)
def test_person_changed_after_the_run_is_handled_per_strategy(applied, pg_rows, strategy, expected_a):
    applied["pg"].execute(
        "UPDATE posthog_person SET properties = properties || %s::jsonb, version = version + 1 "
        "WHERE uuid = %s",
        ('{"plan": "team", "new": 1, "source": "user"}', A),
    )
    run = run_restore("--job-id", "job-a", "--strategy", strategy, "--team-id", "1", "--output", "json")
    assert run.exit_code == 0, run.stderr
    now = state(pg_rows)
    assert now[A][0] == expected_a
    assert now[A][3] == 6  # apply: 4, the other writer: 5
    # B was untouched since the run: every strategy removes the key the run added
    assert now[B][:3] == applied["before"][B][:3]
    assert now[E] == applied["after"][E]  # team 2 not selected
    if strategy == "keep_newer":
        assert now[A][1] == {"plan": "2026-01-08T10:00:00.250000+00:00", "legacy": T_OLD}
        assert now[A][2] == {"plan": "set", "legacy": "set_once"}
    else:
        assert now[A][1:3] == applied["before"][A][1:3]


def test_restore_of_a_restore_round_trips(applied, pg_rows, kafka_bootstrap):
    undo = run_restore("--job-id", "job-a", "--restore-job-id", "undo-a")
    assert undo.exit_code == 0, undo.stderr
    assert "restore job undo-a: done; undo it with: runner restore --job-id undo-a" in undo.stdout
    undone = state(pg_rows)
    redo = run_restore("--job-id", "undo-a", "--restore-job-id", "redo-a", "--output", "json")
    assert redo.exit_code == 0, redo.stderr
    assert redo.summary()["restored"] == 4
    now = state(pg_rows)
    for person in (A, B, C, E):
        assert now[person][:3] == applied["after"][person][:3]
        assert now[person][3] == undone[person][3] + 1
    restored = messages_of(kafka_bootstrap, applied["topic"], {str(p): now[p][3] for p in now})
    assert json.loads(restored[str(B)]["properties"]) == {"a": 1, "ref": "ads"}
    # ... and the redo can be undone in turn.
    assert run_restore("--job-id", "redo-a").exit_code == 0
    assert {p: s[:3] for p, s in state(pg_rows).items()} == {p: s[:3] for p, s in undone.items()}


def test_dry_run_writes_nothing_and_shows_what_would_be_restored(applied, pg_rows, kafka_bootstrap):
    snapshot = everything(pg_rows)
    published = len(read_topic(kafka_bootstrap, applied["topic"]))
    metrics_rows = (
        applied["ch"].query("SELECT count() FROM posthog.custom_metrics_counter_events").result_rows
    )

    run = run_restore("--job-id", "job-a", "--dry-run", "--sample", "1")
    assert run.exit_code == 0, run.stderr
    out = run.stdout
    assert (
        "restore of job job-a (dry run, nothing will be written), strategy keep_newer: 4 backup rows" in out
    )
    table = {
        line.split()[0]: line.split()
        for line in out.splitlines()
        if line[:1].isdigit() or line[:5] == "total"
    }
    # team, status, processed, would restore, unchanged, not found, conflict, failed, commits
    assert table["1"][:9] == ["1", "succeeded", "3", "3", "0", "0", "0", "0", "0"]
    assert table["2"][:4] == ["2", "succeeded", "1", "1"]
    assert "team 1: sample of restored persons" in out
    assert f"person {A} (id {applied['ids'][A]}): version 4 -> 5" in out
    assert 'before: {"plan": "enterprise", "source": "seo"}' in out
    assert 'after:  {"legacy": "x", "plan": "pro", "source": "seo"}' in out
    assert "dry run: nothing was written" in out

    as_json = run_restore("--job-id", "job-a", "--dry-run", "--output", "json")
    assert as_json.exit_code == 0, as_json.stderr
    summary = as_json.summary()
    assert (summary["dry_run"], summary["processed"], summary["restored"], summary["skipped"]) == (
        True,
        4,
        0,
        4,
    )
    assert summary["teams"][0]["outcomes"]["restored"] == 3
    assert as_json.persons()[str(A)]["properties_after"] == {"plan": "pro", "source": "seo", "legacy": "x"}

    assert everything(pg_rows) == snapshot
    assert len(read_topic(kafka_bootstrap, applied["topic"])) == published
    assert (
        applied["ch"].query("SELECT count() FROM posthog.custom_metrics_counter_events").result_rows
        == metrics_rows
    )


def test_bad_input_exits_2_and_writes_nothing(applied, pg_rows):
    snapshot = everything(pg_rows)
    cases = [
        (["--job-id", "job-a", "--strategy", "keep-newer"], "'keep-newer' is not one of 'keep_newer'"),
        (["--job-id", "no-such-job"], "no backup rows for job id 'no-such-job'"),
        (["--job-id", "job-a", "--team-id", "1", "--team-id", "9"], "team id(s) [9]"),
        (["--job-id", "job-a", "--person-id", "999999"], "person id(s) ['999999']"),
        (["--job-id", "job-a", "--team-id", "2", "--person-uuid", str(A)], f"person uuid(s) ['{A}']"),
        (["--job-id", "job-a", "--restore-job-id", "job-a"], "must differ from --job-id"),
        (["--job-id", "job-a", "--restore-job-id", "bad id"], "Invalid value for --restore-job-id"),
    ]
    for args, message in cases:
        run = run_restore(*args)
        assert run.exit_code == 2, (args, run.stdout, run.stderr)
        assert message in run.stderr, (args, run.stderr)
        assert run.stdout == ""
    assert everything(pg_rows) == snapshot

    # A restore job id names one restore of one job. (Backups of a job outside the ledger, such as
    # the original PostHog job's, are restorable; their job id cannot name a restore.)
    applied["pg"].execute(
        "INSERT INTO recon_run (job_id, kind, config) VALUES ('job-x', 'apply', '{}'), "
        "('undo-b', 'restore', '{\"source_job_id\": \"job-b\"}')"
    )
    applied["pg"].execute(
        "INSERT INTO posthog_person_reconciliation_backup "
        "SELECT 'posthog-run', team_id, person_id, uuid, properties, properties_last_updated_at, "
        "properties_last_operation, version, is_identified, created_at, is_user_id, pending_operations, "
        "properties_after, properties_last_updated_at_after, properties_last_operation_after, version_after "
        "FROM posthog_person_reconciliation_backup WHERE job_id = 'job-a' AND team_id = 2"
    )
    snapshot = everything(pg_rows)
    for restore_job_id, message in (
        ("job-x", "'job-x' already belongs to an apply run"),
        ("undo-b", "restored job 'job-b', not 'job-a'"),
        ("posthog-run", "'posthog-run' already has backup rows"),
    ):
        run = run_restore("--job-id", "job-a", "--restore-job-id", restore_job_id)
        assert run.exit_code == 2 and message in run.stderr, run.stderr
    assert everything(pg_rows) == snapshot
    outside = run_restore("--job-id", "posthog-run", "--dry-run", "--output", "json")
    assert outside.exit_code == 0, outside.stderr
    assert [line["outcome"] for line in outside.persons().values()] == ["restored"]


def test_person_filters(applied, pg_rows):
    by_pk = run_restore("--job-id", "job-a", "--person-id", str(applied["ids"][A]), "--output", "json")
    assert by_pk.exit_code == 0, by_pk.stderr
    assert list(by_pk.persons()) == [str(A)]
    by_uuid = run_restore(
        "--job-id", "job-a", "--person-uuid", str(E), "--person-uuid", str(B), "--output", "json"
    )
    assert by_uuid.exit_code == 0, by_uuid.stderr
    assert list(by_uuid.persons()) == [str(B), str(E)]  # ordered by (team, person pk)
    now = state(pg_rows)
    for person in (A, B, E):
        assert now[person][0] == applied["before"][person][0]
    assert now[C] == applied["after"][C]


def test_locked_and_deleted_persons(applied, pg_rows, pg_url):
    applied["pg"].execute("DELETE FROM posthog_person WHERE uuid = %s", (B,))
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM posthog_person WHERE uuid = %s FOR UPDATE", (A,))
        run = run_restore("--job-id", "job-a", "--output", "json")
        holder.rollback()
    # A stays held (past the retry's wait): version_conflict, and its team is incomplete.
    assert run.exit_code == 1, run.stderr
    outcomes = {uuid: line["outcome"] for uuid, line in run.persons().items()}
    assert outcomes == {
        str(A): "version_conflict",
        str(B): "not_found",
        str(C): "restored",
        str(E): "restored",
    }
    team1 = run.summary()["teams"][0]
    assert (team1["processed"], team1["restored"], team1["skipped"]) == (3, 1, 2)
    assert team1["status"] == "incomplete" and "version_conflict" in team1["error"]
    assert state(pg_rows)[A] == applied["after"][A]
    assert f"Person {A} (id {applied['ids'][A]}) of team 1: version_conflict" in run.stderr


def test_failing_team_is_reported_and_the_others_restored(applied, pg_rows):
    # A trigger that raises on team 2's write: its batch fails, team 1 goes on.
    pg = applied["pg"]
    pg.execute(
        "CREATE FUNCTION restore_test_reject() RETURNS trigger LANGUAGE plpgsql AS "
        "$$BEGIN IF NEW.team_id = 2 THEN RAISE EXCEPTION 'restore_test_reject'; END IF; RETURN NEW; END$$; "
        "CREATE TRIGGER restore_test_reject BEFORE UPDATE ON posthog_person "
        "FOR EACH ROW EXECUTE FUNCTION restore_test_reject()"
    )
    try:
        run = run_restore("--job-id", "job-a", "--restore-job-id", "undo-fail", "--output", "json")
    finally:
        pg.execute("DROP TRIGGER restore_test_reject ON posthog_person; DROP FUNCTION restore_test_reject()")
    assert run.exit_code == 1
    summary = run.summary()
    teams = {t["team_id"]: t for t in summary["teams"]}
    assert teams[1]["status"] == "succeeded" and teams[1]["restored"] == 3
    assert teams[2]["status"] == "failed" and "restore_test_reject" in teams[2]["error"]
    assert teams[2]["outcomes"]["team_failed"] == 1
    # Nothing of team 2 was written: its entry adds 0 to the processed and skipped counts.
    assert [teams[2][c] for c in ("processed", "restored", "skipped", "commits")] == [0, 0, 0, 0]
    assert [summary[c] for c in ("processed", "restored", "skipped")] == [
        teams[1]["processed"],
        3,
        teams[1]["skipped"],
    ]
    assert pg_rows(
        "SELECT processed, updated, skipped FROM recon_run_team WHERE job_id = 'undo-fail' AND team_id = 2"
    ) == [(0, 0, 0)]
    assert run.persons()[str(E)]["outcome"] == "team_failed"
    assert state(pg_rows)[E] == applied["after"][E]
    assert pg_rows("SELECT team_id, status FROM recon_run_team WHERE job_id = 'undo-fail' ORDER BY 1") == [
        (1, "succeeded"),
        (2, "failed"),
    ]
    errors = (
        applied["ch"]
        .query(
            "SELECT labels FROM posthog.custom_metrics_counter_events "
            "WHERE name = 'person_property_restore_error'"
        )
        .result_rows
    )
    assert errors == [({"job_name": "person_property_restore_job", "chunk_id": "team_2", "reason": "error"},)]
    processed = (
        applied["ch"]
        .query(
            "SELECT increment FROM posthog.custom_metrics_counter_events "
            "WHERE name = 'person_property_restore_persons_processed_total' AND labels['chunk_id'] = 'team_2'"
        )
        .result_rows
    )
    assert processed == [(0.0,)]
    # Resuming the restore job restores team 2 once the obstacle is gone.
    again = run_restore("--job-id", "job-a", "--restore-job-id", "undo-fail", "--output", "json")
    assert again.exit_code == 0, again.stderr
    assert state(pg_rows)[E][0] == {"x": "old"}


def test_value_postgres_refuses_fails_only_its_person(applied, pg_rows):
    """Issue 11, fault 2 for restore: a value Postgres refuses (here a CHECK constraint) fails that
    entry alone (`invalid_value`, with the reason); the rest of its team is restored; exit 1."""
    pg = applied["pg"]
    pg.execute(
        "ALTER TABLE posthog_person ADD CONSTRAINT restore_test_reject "
        "CHECK (team_id <> 2 OR properties->>'x' IS DISTINCT FROM 'old') NOT VALID"
    )
    try:
        run = run_restore("--job-id", "job-a", "--restore-job-id", "undo-invalid", "--output", "json")
    finally:
        pg.execute("ALTER TABLE posthog_person DROP CONSTRAINT restore_test_reject")
    assert run.exit_code == 1
    teams = {t["team_id"]: t for t in run.summary()["teams"]}
    assert teams[1]["status"] == "succeeded" and teams[1]["restored"] == 3
    assert teams[2]["status"] == "incomplete" and teams[2]["outcomes"]["invalid_value"] == 1
    line = run.persons()[str(E)]
    assert line["outcome"] == "invalid_value" and "restore_test_reject" in line["reason"]
    assert state(pg_rows)[E] == applied["after"][E]
    [(status, outcomes)] = pg_rows(
        "SELECT status, outcomes FROM recon_run_team WHERE job_id = 'undo-invalid' AND team_id = 2"
    )
    assert status == "incomplete" and outcomes["failures"][0]["person_uuid"] == str(E)
    again = run_restore("--job-id", "job-a", "--restore-job-id", "undo-invalid", "--output", "json")
    assert again.exit_code == 0, again.stderr
    assert state(pg_rows)[E][0] == {"x": "old"}


def test_crash_after_commit_is_resumed_and_published_once(applied, pg_rows, kafka_bootstrap, subprocess_env):
    env = {**subprocess_env, faults.ENV_FAULT: "after_commit:1"}
    crashed = _fixtures.run_subprocess(
        ["restore", "--job-id", "job-a", "--restore-job-id", "undo-crash", "--batch-size", "1"], env
    )
    assert crashed.returncode == faults.EXIT_CODE, crashed.stderr
    assert pg_rows(
        "SELECT count(*), count(published_at) FROM recon_outbox_status WHERE job_id = 'undo-crash'"
    ) == [(1, 0)]

    resumed = run_restore(
        "--job-id", "job-a", "--restore-job-id", "undo-crash", "--batch-size", "1", "--output", "json"
    )
    assert resumed.exit_code == 0, resumed.stderr
    assert resumed.summary()["restored"] == 4
    assert pg_rows(
        "SELECT count(*), count(published_at) FROM recon_outbox_status WHERE job_id = 'undo-crash'"
    ) == [(4, 4)]
    now = state(pg_rows)
    restored = messages_of(kafka_bootstrap, applied["topic"], {str(p): now[p][3] for p in now})
    assert set(restored) == {str(A), str(B), str(C), str(E)}


def test_publish_failing_after_the_commit_still_counts_the_restored_persons(applied, pg_rows):
    """Issue 11, fault 6: the restore of A commits, then its message cannot be produced (1.2 MB, past
    the producer's message size limit). The committed work counts as restored, in the output and the
    ledger; the run exits 1."""
    big = "x" * 1_200_000
    applied["pg"].execute(
        "UPDATE posthog_person_reconciliation_backup SET properties = jsonb_set(properties, '{plan}', %s) "
        "WHERE job_id = 'job-a' AND uuid = %s",
        (json.dumps(big), A),
    )
    # Human output without samples: person lines would carry the 1.2 MB value.
    run = run_restore("--job-id", "job-a", "--restore-job-id", "undo-big", "--team-id", "1", "--sample", "0")
    assert run.exit_code == 1, run.stdout + run.stderr
    assert pg_rows("SELECT properties->>'plan' = %s FROM posthog_person WHERE uuid = %s", (big, A)) == [
        (True,)
    ]
    [(outcomes,)] = pg_rows("SELECT outcomes FROM recon_run_team WHERE job_id = 'undo-big'")
    assert outcomes["restored"] == 3 and outcomes["team_failed"] == 0, outcomes
    assert pg_rows("SELECT processed, updated FROM recon_run_team WHERE job_id = 'undo-big'") == [(3, 3)]


def test_row_held_past_the_quick_retries_is_waited_for_at_the_end_of_the_team(applied, pg_rows, pg_url):
    """Issue 11, fault 8 for restore: A's row is held for 2.5 s, past the quick retries; the end-of-team
    retry waits for the lock and restores it."""
    taken = threading.Event()

    def hold() -> None:
        with psycopg.connect(pg_url) as conn:
            conn.execute("SELECT 1 FROM posthog_person WHERE uuid = %s FOR UPDATE", (A,))
            taken.set()
            time.sleep(2.5)
            conn.rollback()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert taken.wait(10)
    run = run_restore("--job-id", "job-a", "--restore-job-id", "undo-wait", "--output", "json")
    holder.join()
    assert run.exit_code == 0, run.stdout + run.stderr
    assert run.persons()[str(A)]["outcome"] == "restored"
    assert len(run.json_lines()) == 5  # one line per entry, then the summary
    assert state(pg_rows)[A][0] == applied["before"][A][0]


def test_lost_connection_fails_the_team_with_true_counts_and_the_restore_goes_on(
    applied, pg_rows, pg_url, tmp_path, monkeypatch
):
    """Issue 11, fault 4 for restore: the restore's backends are terminated after team 1's first batch
    committed, as its second is about to be locked. Team 1 fails with that batch counted, team 2 is
    restored on a new connection, the ledger holds the true counts, and resuming the restore job
    finishes team 1."""
    marker = tmp_path / "fault"
    monkeypatch.setenv(faults.ENV_FAULT, "before_lock:2:pause")  # team 1's second batch
    monkeypatch.setenv(faults.ENV_FAULT_FILE, str(marker))

    def terminate() -> None:
        deadline = time.monotonic() + 60
        with psycopg.connect(pg_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                committed = conn.execute(
                    "SELECT count(*) FROM recon_outbox WHERE job_id = 'undo-lost'"
                ).fetchone()[0]
                if marker.exists() and committed >= 1:
                    break
                time.sleep(0.05)
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'person_property_restore'"
            )
        marker.unlink()

    actor = threading.Thread(target=terminate, daemon=True)
    actor.start()
    run = run_restore(
        "--job-id", "job-a", "--restore-job-id", "undo-lost", "--batch-size", "1", "--output", "json"
    )
    actor.join(5)
    monkeypatch.delenv(faults.ENV_FAULT)
    assert run.exit_code == 1, run.stdout + run.stderr
    teams = {t["team_id"]: t for t in run.summary()["teams"]}
    assert teams[1]["status"] == "failed" and (teams[1]["restored"], teams[1]["commits"]) == (1, 1)
    assert teams[2]["status"] == "succeeded" and teams[2]["restored"] == 1
    assert pg_rows(
        "SELECT team_id, status, updated FROM recon_run_team WHERE job_id = 'undo-lost' ORDER BY 1"
    ) == [
        (1, "failed", 1),
        (2, "succeeded", 1),
    ]
    again = run_restore("--job-id", "job-a", "--restore-job-id", "undo-lost", "--output", "json")
    assert again.exit_code == 0, again.stdout + again.stderr
    now = state(pg_rows)
    assert all(now[person][0] == applied["before"][person][0] for person in (A, B, C, E))
