"""Closing the loop locally: `runner warehouse sync-persons` ingests what apply published into ClickHouse
`person`, and `runner verify` checks the job's persons against ClickHouse and the diff table."""

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
from click.testing import CliRunner

from runner.cli import main

pytestmark = pytest.mark.integration

PERSONS = [new_uuid(i) for i in range(1, 5)]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _apply_plan_paid(env, run_apply, job_id: str) -> None:
    """Four persons on plan free in both stores, a diff setting plan paid, applied under `job_id`."""
    ch = env["ch"]
    insert_ch_persons(ch, [(1, u, {"plan": "free"}, 3) for u in PERSONS])
    for u in PERSONS:
        insert_pg_person(env["pg"], 1, u, {"plan": "free"}, 3)
    insert_diffs(ch, [Diff(1, u, 3, set={"plan": ('"paid"', TS)}) for u in PERSONS])
    insert_summary(ch, {1: len(PERSONS)})
    assert run_apply("--job-id", job_id).exit_code == 0


def test_sync_persons_then_verify(env, run_apply):
    ch = env["ch"]
    _apply_plan_paid(env, run_apply, "job-verify")

    # Nothing ingested yet: ClickHouse still has version 3 everywhere.
    before = invoke("verify", "--job-id", "job-verify", "--no-recompute", "--output", "json")
    assert before.exit_code == 1
    assert json.loads(before.stdout)["not_ingested"] == 4

    synced = invoke("warehouse", "sync-persons")
    assert synced.exit_code == 0, synced.stderr
    assert "4 person rows inserted" in synced.stdout
    rows = ch.query(
        "SELECT id, argMax(properties, version), max(version) FROM posthog.person GROUP BY id ORDER BY id"
    ).result_rows
    assert [(json.loads(p), v) for _, p, v in rows] == [({"plan": "paid"}, 4)] * 4
    # Syncing again (from the beginning, or resuming) changes nothing: rows are versioned.
    assert invoke("warehouse", "sync-persons", "--resume").stdout.startswith(f"{env['topic']}: 0 messages")
    assert invoke("warehouse", "sync-persons").exit_code == 0
    assert ch.query("SELECT count() FROM posthog.person WHERE version = 4").result_rows == [(8,)]

    # What recomputing the models could give: person 0 repaired; 1 listed with the value it already has
    # (raw-text comparison: a rule artifact); 2 changed by someone else since; 3 still differing.
    ch.command("TRUNCATE TABLE recon.person_property_diff")
    insert_diffs(ch, [Diff(1, PERSONS[1], 4, set={"plan": ('"paid"', TS)})])
    insert_diffs(
        ch, [Diff(1, u, 5 if u == PERSONS[2] else 4, set={"plan": ('"x"', TS)}) for u in PERSONS[2:]]
    )
    insert_ch_persons(ch, [(1, PERSONS[2], {"plan": "other"}, 5)])
    env["pg"].execute("UPDATE posthog_person SET version = 5 WHERE uuid = %s", (PERSONS[2],))
    after = invoke("verify", "--job-id", "job-verify", "--no-recompute", "--output", "json")
    report = json.loads(after.stdout)
    counts = {k: report[k] for k in ("ok", "rule_artifact", "changed_since", "postgres_behind", "differs")}
    assert counts == {"ok": 1, "rule_artifact": 1, "changed_since": 1, "postgres_behind": 0, "differs": 1}
    assert report["samples"]["differs"][0]["person_uuid"] == str(PERSONS[3])
    assert after.exit_code == 1

    ch.command(
        "ALTER TABLE recon.person_property_diff DELETE WHERE person_id = %(p)s",
        parameters={"p": PERSONS[3]},
        settings={"mutations_sync": 2},
    )
    final = invoke("verify", "--job-id", "job-verify", "--no-recompute")
    assert final.exit_code == 0, final.stdout
    assert "verify: ok" in final.stdout


def test_verify_unknown_job_exits_2(env):
    result = invoke("verify", "--job-id", "nope", "--no-recompute")
    assert result.exit_code == 2 and "no job 'nope'" in result.stderr


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ('bug_window_end: "2026-01-07 14:52:00", semantics: Replay', "var semantics"),
        ('bug_window_end: "2026-01-01 00:00:00"', "var bug_window_end"),
    ],
)
def test_verify_with_vars_the_models_refuse_exits_2_naming_the_var(env, run_apply, bad, named):
    ch = env["ch"]
    insert_ch_persons(ch, [(1, PERSONS[0], {"plan": "free"}, 3)])
    insert_pg_person(env["pg"], 1, PERSONS[0], {"plan": "free"}, 3)
    insert_diffs(ch, [Diff(1, PERSONS[0], 3, set={"plan": ('"paid"', TS)})])
    insert_summary(ch, {1: 1})
    assert run_apply("--job-id", "job-bad-vars").exit_code == 0
    result = CliRunner().invoke(
        main,
        [
            "verify",
            "--job-id",
            "job-bad-vars",
            "--vars",
            '{bug_window_start: "2026-01-06 20:01:00", ' + bad + "}",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--vars refused by the models" in result.stderr and named in result.stderr


def test_replay_semantics_shown_and_verify_counts_no_rule_artifacts(env, run_apply):
    """A diff built with `semantics: replay` is a fixed point, so whatever the recomputed diff still
    lists for a person the job repaired is `differs`, never `rule_artifact`."""
    ch = env["ch"]
    ch.command(
        "ALTER TABLE recon.person_property_diff_summary "
        "ADD COLUMN IF NOT EXISTS semantics String DEFAULT 'original' AFTER mode"
    )
    person = PERSONS[0]
    insert_ch_persons(ch, [(1, person, {"plan": "free"}, 3)])
    insert_pg_person(env["pg"], 1, person, {"plan": "free"}, 3)
    insert_diffs(ch, [Diff(1, person, 3, set={"plan": ('"paid"', TS)})])
    insert_summary(ch, {1: 1})
    ch.command(
        "ALTER TABLE recon.person_property_diff_summary UPDATE semantics = 'replay' WHERE 1 "
        "SETTINGS mutations_sync = 2"
    )

    dry = run_apply("--job-id", "job-replay", "--dry-run")
    assert "job job-replay (dry run, nothing will be written): 1 teams, semantics replay" in dry.stdout
    applied = run_apply("--job-id", "job-replay", "--output", "json")
    assert applied.exit_code == 0 and applied.summary()["semantics"] == "replay"
    assert invoke("warehouse", "sync-persons").exit_code == 0

    # The same leftover the original rules would call an artifact (a SET of the value the person holds)
    ch.command("TRUNCATE TABLE recon.person_property_diff")
    insert_diffs(ch, [Diff(1, person, 4, set={"plan": ('"paid"', TS)})])
    result = invoke("verify", "--job-id", "job-replay", "--no-recompute", "--output", "json")
    report = json.loads(result.stdout)
    assert report["semantics"] == "replay"
    assert (report["rule_artifact"], report["differs"]) == (0, 1)
    assert result.exit_code == 1

    ch.command("TRUNCATE TABLE recon.person_property_diff")
    final = invoke("verify", "--job-id", "job-replay", "--no-recompute")
    assert final.exit_code == 0, final.stdout
    assert "diff table semantics replay" in final.stdout
    assert "rule_artifact          0" in final.stdout


def test_verify_sample_and_json_shorthand(env, run_apply, monkeypatch):
    _apply_plan_paid(env, run_apply, "job-sample")

    # Not ingested yet: all four are `not_ingested`; the human output shows --sample of them.
    human = invoke("verify", "--job-id", "job-sample", "--no-recompute", "--sample", "1")
    assert human.exit_code == 1
    assert "  not_ingested           4" in human.stdout
    assert human.stdout.count("  not_ingested: {") == 1
    assert "  ... 3 more not_ingested (--sample N shows up to N per class; --output json lists all)" in (
        human.stdout
    )
    monkeypatch.setenv("RECON_VERIFY_SAMPLE", "0")
    assert "not_ingested: {" not in invoke("verify", "--job-id", "job-sample", "--no-recompute").stdout

    as_json = invoke("verify", "--job-id", "job-sample", "--no-recompute", "--json")
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == 1 and report["not_ingested"] == 4
    assert sorted(p["person_uuid"] for p in report["persons"]) == sorted(map(str, PERSONS))
    assert {p["class"] for p in report["persons"]} == {"not_ingested"}
