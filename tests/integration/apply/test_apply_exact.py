"""Issue 11, fault 1: keys the diff does not touch are written back as Postgres holds them, values the
diff sets keep ClickHouse's JSON text, and the Kafka message carries the same exact properties."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from apply_support import TS, Diff, insert_ch_persons, insert_diffs, insert_summary, new_uuid
from kafka_util import read_topic

pytestmark = pytest.mark.integration

STORED = (
    '{"plan": "free", "precise": 0.30000000000000000001, "big": 12345678901234567890.5, '
    '"huge": 1e400, "tiny": 1e-400, "scaled": 1.50, "nested": {"n": 98765432109876543210987654321}}'
)


def test_untouched_keys_and_set_values_stay_exact(env, run_apply, pg_rows, kafka_bootstrap):
    person, behind = new_uuid(1), new_uuid(2)
    ch, pg = env["ch"], env["pg"]
    insert_ch_persons(ch, [(1, person, STORED, 2), (1, behind, STORED, 2), (1, behind, STORED, 3)])
    for uuid, version in ((person, 2), (behind, 3)):
        pg.execute(
            "INSERT INTO posthog_person (created_at, properties, is_identified, uuid, team_id, version) "
            "VALUES (now(), %s::jsonb, true, %s, 1, %s)",
            (STORED, uuid, version),
        )
    entries = {
        "set": {"plan": ('"paid"', TS), "ratio": ("0.10000000000000000000001", TS), "exp": ("2.50E+3", TS)},
        "set_once": {"id_big": ("123456789012345678901234567890", TS), "plan": ('"x"', TS)},
    }
    # One person at the baseline (simple merge), one ahead of it (three-way merge).
    insert_diffs(ch, [Diff(1, person, 2, **entries), Diff(1, behind, 2, **entries)])
    insert_summary(ch, {1: 2})

    run = run_apply("--job-id", "job-exact", "--output", "json")
    assert run.exit_code == 0, run.stdout + run.stderr
    assert {line["outcome"] for line in run.persons().values()} == {"success"}
    # The JSON lines show the numbers as numbers with their exact text, never as strings.
    [line] = [
        json.loads(text, parse_float=Decimal) for text in run.stdout.splitlines() if str(person) in text
    ]
    assert line["properties_before"]["precise"] == Decimal("0.30000000000000000001")
    assert line["properties_after"]["id_big"] == 123456789012345678901234567890

    expected = pg_rows(
        'SELECT (%s::jsonb || \'{"plan": "paid", "ratio": 0.10000000000000000000001, '
        '"exp": 2.50E+3, "id_big": 123456789012345678901234567890}\'::jsonb)::text',
        (STORED,),
    )[0][0]
    rows = pg_rows("SELECT uuid, properties::text, version FROM posthog_person ORDER BY uuid")
    assert [(text, version) for _, text, version in rows] == [(expected, 3), (expected, 4)]
    # The backup's after-state is what the update wrote; its before-state what Postgres held.
    backups = pg_rows(
        "SELECT properties::text, properties_after::text FROM posthog_person_reconciliation_backup"
    )
    before = pg_rows("SELECT %s::jsonb::text", (STORED,))[0][0]
    assert backups == [(before, expected)] * 2

    messages = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, env["topic"])]
    assert len(messages) == 2
    exact = json.loads(expected, parse_float=Decimal)
    for message in messages:
        properties = json.loads(message["properties"], parse_float=Decimal)
        assert properties == exact
        assert isinstance(properties["id_big"], int) and properties["precise"] == Decimal(
            "0.30000000000000000001"
        )


def test_restore_puts_back_exactly_what_postgres_held(env, run_apply, pg_rows):
    """Fault 1's twin in restore: apply then restore returns the properties to Postgres's exact text
    (numbers a double cannot hold, trailing zeros, big integers)."""
    from click.testing import CliRunner

    from runner.cli import main

    person = new_uuid(3)
    insert_ch_persons(env["ch"], [(1, person, STORED, 2)])
    env["pg"].execute(
        "INSERT INTO posthog_person (created_at, properties, is_identified, uuid, team_id, version) "
        "VALUES (now(), %s::jsonb, true, %s, 1, 2)",
        (STORED, person),
    )
    insert_diffs(env["ch"], [Diff(1, person, 2, set={"plan": ('"paid"', TS), "scaled": ("2.50", TS)})])
    insert_summary(env["ch"], {1: 1})
    before = pg_rows("SELECT properties::text FROM posthog_person")
    assert run_apply("--job-id", "job-exact-r", "--output", "json").exit_code == 0

    restored = CliRunner().invoke(main, ["restore", "--job-id", "job-exact-r", "--output", "json"])
    assert restored.exit_code == 0, restored.stdout + restored.stderr
    assert pg_rows("SELECT properties::text FROM posthog_person") == before
