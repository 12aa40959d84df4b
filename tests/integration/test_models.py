"""The dbt models against the independent Python implementation of the rules (tests/reference_rules.py).

dbt runs in this process (`runner.jobs.dbt.run_dbt`) on the session's embedded ClickHouse, in a source
database and target schema of this module's own. dbt invocations cost seconds each, so scenarios
are grouped into few runs:

- hand-built events covering the edge cases of the spec, both modes;
- seeded data (`runner.local.seed`) spanning many windows: both modes against the oracle, built first up to
  the end of the bug window and then incrementally up to the end of the data, the two modes against
  each other, re-runs and a simulated crash, more events appended later;
- the team vars: a build replaces its teams' rows and keeps the others;
- `dbt test` (generic and unit tests) on the built models.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import models_harness as mh
import pytest
import reference_rules as rr

pytestmark = pytest.mark.integration

W0, W1 = "2026-01-06 20:01:00", "2026-01-07 14:52:00"
NOW = "2026-01-20 00:00:00"


def ts(text: str) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def uid(label: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"recon-test/{label}")


def props(**members: object) -> str:
    return json.dumps(members, ensure_ascii=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> mh.ModelsEnv:
    models_env = mh.ModelsEnv(
        source_database="posthog_models_it",
        target_schema="recon_models_it",
        target_path=tmp_path_factory.mktemp("dbt-target"),
    )
    models_env.drop_models()
    models_env.init_sources()
    return models_env


# --- hand-built data --------------------------------------------------------------------------------


def hand_built() -> tuple[list[rr.Event], list[rr.PersonRow], list[rr.OverrideRow]]:
    """Small data with one person per edge case (team 1), plus teams for discovery and filters."""
    events: list[rr.Event] = []
    persons: list[rr.PersonRow] = []
    overrides: list[rr.OverrideRow] = []
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def person(label: str, team: int, properties: dict | str, version: int, deleted: int = 0) -> uuid.UUID:
        text = properties if isinstance(properties, str) else json.dumps(properties)
        persons.append(rr.PersonRow(uid(label), team, text, deleted, version, at, version))
        return uid(label)

    def event(label: str, team: int, distinct: str, owner: uuid.UUID, when: str, properties: str) -> None:
        events.append(rr.Event(uid(label), team, distinct, owner, ts(when), properties))

    # The worked example of the spec (section 9): anon is merged into p; the SET after W1 wins.
    p = person("p", 1, {"plan": "pro", "legacy": "x", "source": "seo"}, 12)
    old = person("p-old", 1, {}, 3, deleted=1)
    overrides.append(rr.OverrideRow(1, "anon", p, 0, 1, at, 1, 0))
    event(
        "e1",
        1,
        "anon",
        old,
        "2026-01-06 21:00:00",
        props(**{"$set": {"plan": "pro", "$browser": "Chrome"}, "$set_once": {"source": "ads"}}),
    )
    event("e2", 1, "u1", p, "2026-01-07 09:00:00", props(**{"$set": {"plan": "team"}, "$unset": ["legacy"]}))
    event("e3", 1, "u1", p, "2026-01-08 10:00:00", props(**{"$set": {"plan": "enterprise"}}))

    # Only a post-W1 difference (gotcha 3): single pass adds the key, windowed mode never sees it.
    q = person("q", 1, {"plan": "free"}, 2)
    event("q1", 1, "q", q, "2026-01-09 10:00:00", props(**{"$set_once": {"src": "ads"}}))
    event("q2", 1, "q", q, "2026-01-09 11:00:00", props(**{"$unset": ["src"]}))

    # Equal timestamps: the event uuid decides (ClickHouse order), deterministically.
    r = person("r", 1, {"plan": "z", "first": "z"}, 5)
    for label in ("r1", "r2", "r3"):
        event(
            label,
            1,
            "r",
            r,
            "2026-01-07 01:00:00.123456",
            props(**{"$set": {"plan": label}, "$set_once": {"first": label, "fresh": label}}),
        )

    # Deleted in ClickHouse, missing from ClickHouse: never reconciled (gotcha 11).
    s = person("s", 1, {"plan": "pro"}, 7)
    persons.append(rr.PersonRow(s, 1, "{}", 1, 107, at, 107))
    event("s1", 1, "s", s, "2026-01-07 02:00:00", props(**{"$set": {"plan": "team"}}))
    event("t1", 1, "t", uid("t"), "2026-01-07 02:00:00", props(**{"$set": {"plan": "team"}}))

    # A deleted override falls back to the event's own person; the highest version wins (gotcha 13).
    u = person("u", 1, {"plan": "pro"}, 4)
    w = person("w", 1, {"plan": "pro"}, 4)
    overrides += [
        rr.OverrideRow(1, "u-dev", w, 0, 1, at, 2, 0),
        rr.OverrideRow(1, "u-dev", w, 1, 2, at, 3, 0),
        rr.OverrideRow(1, "w-dev", u, 1, 1, at, 4, 0),
        rr.OverrideRow(1, "w-dev", w, 0, 2, at, 5, 0),
    ]
    event("u1", 1, "u-dev", u, "2026-01-07 03:00:00", props(**{"$set": {"plan": "u-plan"}}))
    event("w1", 1, "w-dev", u, "2026-01-07 03:00:00", props(**{"$set": {"plan": "w-plan"}}))

    # Nothing usable: malformed JSON, blocklisted keys only, nulls, non-object forms.
    v = person("v", 1, {"plan": "pro", "$os": "Linux"}, 1)
    event("v1", 1, "v", v, "2026-01-07 04:00:00", '{"$set": {"plan": "team"')
    event(
        "v2",
        1,
        "v",
        v,
        "2026-01-07 04:01:00",
        props(**{"$set": {"$os": "Mac", "plan": None}, "$unset": ["$os"]}),
    )
    event("v3", 1, "v", v, "2026-01-07 04:02:00", props(**{"$set": "plan=team", "$unset": {"plan": ""}}))
    event("v4", 1, "v", v, "2026-01-07 04:03:00", "{'$set': {'plan': 'team'}}")

    # SET comparison by JSON value (R6.4 as recon decides it, macros/recon_sql.sql): 1.0 equals 1;
    # nested key order and string escapes never matter; true is not 1; a member holding null counts
    # (the JSON type would drop it); unicode and escapes survive.
    x = person(
        "x",
        1,
        {
            "n": 1,
            "m": {"a": 2, "b": 1},
            "flag": 1,
            "name": "Zoë",
            "quote": 'a"b\\c',
            "nul": {"a": None, "b": 1},
            "ord": {"a": None, "b": [1, True, {"d": 1, "c": None}]},
        },
        9,
    )
    event(
        "x1",
        1,
        "x",
        x,
        "2026-01-07 05:00:00",
        '{"$set": {"n": 1.0, "m": {"b": 1, "a": 2}, "flag": true, '
        '"name": "Zo\\u00eb", "quote": "a\\"b\\\\c", "nul": {"b": 1}, '
        '"ord": {"b": [1, true, {"c": null, "d": 1}], "a": null}}}',
    )
    event("x2", 1, "x", x, "2026-01-07 05:00:01", props(**{"$set_once": {"emoji": "🚀 rocket", "empty": ""}}))

    # Window edges: at W0 included, before W0 and at now excluded.
    y = person("y", 1, {"a": 0, "b": 0, "c": 0}, 3)
    event("y0", 1, "y", y, "2026-01-06 20:00:59.999999", props(**{"$set": {"a": 1}}))
    event("y1", 1, "y", y, W0, props(**{"$set": {"b": 1}}))
    event("y2", 1, "y", y, NOW, props(**{"$set": {"c": 1}}))

    # Team 2: property events only after W1 -> not discovered (gotcha 15).
    z = person("z", 2, {"plan": "pro"}, 1)
    event("z1", 2, "z", z, "2026-01-08 00:00:00", props(**{"$set": {"plan": "team"}}))
    event("z0", 2, "z", z, "2026-01-07 00:00:00", props(amount=3))
    # Team 3: an ordinary diff, for the team filters.
    k = person("k", 3, {"plan": "pro"}, 1)
    event("k1", 3, "k", k, "2026-01-07 00:00:00", props(**{"$set": {"plan": "team"}}))
    # Team 4: a key present but nothing to apply -> discovered, summary row with nothing to change.
    n = person("n", 4, {"plan": "pro"}, 1)
    event("n1", 4, "n", n, "2026-01-07 00:00:00", props(**{"$set": None}))
    return events, persons, overrides


def assert_matches_oracle(env: mh.ModelsEnv, dbt_vars: dict) -> rr.Result:
    result = env.oracle(mh.config_from_vars(dbt_vars))
    got, expected = mh.diff_content(env.diff_rows()), mh.oracle_content(result)
    assert got == expected, mh.explain_mismatch(got, expected)
    got_summary, expected_summary = mh.summary_content(env.summary_rows()), mh.oracle_summary(result)
    assert got_summary == expected_summary, mh.explain_mismatch(got_summary, expected_summary)
    return result


def test_hand_built_edge_cases_match_the_rules_in_both_modes(env: mh.ModelsEnv) -> None:
    env.init_sources()
    events, persons, overrides = hand_built()
    env.insert_events(events)
    env.insert_persons(persons)
    env.insert_overrides(overrides)
    # R2.1: an exact duplicate of an event (another `event` name keeps ReplacingMergeTree from merging it)
    env.client.command(
        f"INSERT INTO {env.source_database}.events "
        "(uuid, event, properties, timestamp, team_id, distinct_id, "
        f"person_id, _timestamp) SELECT uuid, 'duplicate', properties, timestamp, team_id, distinct_id, "
        f"person_id, _timestamp FROM {env.source_database}.events WHERE uuid = '{uid('r2')}'"
    )
    env.drop_models()
    p, q, r, x = uid("p"), uid("q"), uid("r"), uid("x")

    single = {"bug_window_start": W0, "bug_window_end": W1, "now": NOW}
    env.run(single)
    result = assert_matches_oracle(env, single)
    rows = {row[2]: row for row in env.diff_rows()}
    # the worked example of section 9
    assert rows[p][4:7] == (("plan",), ('"enterprise"',), (ts("2026-01-08 10:00:00"),))
    assert rows[p][10:12] == (("legacy",), (ts("2026-01-07 09:00:00"),))
    assert q in rows  # gotcha 3, single pass
    # ties: the greatest event uuid in ClickHouse order wins the SET, the least the SET_ONCE
    tie = sorted((uid(label) for label in ("r1", "r2", "r3")), key=rr.ch_uuid_key)
    label = {uid(lbl): lbl for lbl in ("r1", "r2", "r3")}
    assert rows[r][5] == (f'"{label[tie[-1]]}"',)
    assert rows[r][7:9] == (("fresh",), (f'"{label[tie[0]]}"',))
    # JSON values: 1.0 == 1, escapes and key order never matter; true vs 1 and a dropped null member differ
    assert rows[x][4] == ("flag", "nul")
    assert set(rows) == {p, q, r, x, uid("u"), uid("w"), uid("y"), uid("k")}
    assert sorted(result.teams) == [1, 3, 4]
    summary = {row[0]: row for row in env.summary_rows()}
    assert set(summary) == {1, 3, 4} and summary[4][8] == 0 and summary[4][9] == 0
    assert summary[1][6] == 2  # the two malformed events of person v

    windowed = {**single, "window_seconds": 3600}
    env.run(windowed)
    assert_matches_oracle(env, windowed)
    rows = {row[2]: row for row in env.diff_rows()}
    assert q not in rows and p in rows  # R8.11
    assert {row[12] for row in rows.values()} == {"windowed"}


def test_clickhouse_raw_text_model_of_the_oracle(env: mh.ModelsEnv) -> None:
    """The oracle's `ch_raw` reproduces ClickHouse's re-serialisation of JSON values."""
    samples = [
        "0.1",
        "1.5",
        "1e-7",
        "1e21",
        "1e20",
        "123456789.123",
        "-0.0",
        "-0",
        "0",
        "1.0",
        "1E2",
        "2e-6",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "3.14159265358979323846",
        "1.7976931348623157e308",
        "5e-324",
        "12345678901234567890123.5",
        '"q\\"b\\\\s\\n\\t\\u0001\\u001f\\u007f"',
        '"\\ud83d\\ude00"',
        '"<\\/script>"',
        '"\\u2028\\u2029"',
        '"\\b\\f\\r"',
        "true",
        "false",
        "null",
        '[1.0, 2.50, {"z": null}]',
        '{"b": 1, "a": [], "b": 2}',
        '""',
    ]
    document = "{" + ", ".join(f'"k{i}": {text}' for i, text in enumerate(samples)) + "}"
    got = env.client.query(
        "SELECT JSONExtractKeysAndValuesRaw({d:String})", parameters={"d": document}
    ).result_rows[0][0]
    expected = [(key, rr.ch_raw(value)) for key, value in rr.parse_json(document)]
    assert got == expected


BIG = "123456789012345678901234567890"
NEGATIVE_BIG = "-9223372036854775809"


def test_integers_beyond_64_bits_stay_numbers(env: mh.ModelsEnv) -> None:
    """ClickHouse's JSON functions quote integers outside [-2^63, 2^64); the diff gives them back as
    the event's own digits (issue 11: a big integer must not reach Postgres as a string), nested ones
    too, while a real string of digits keeps its quotes. The person's state is read the same way, so
    a big integer Postgres already holds is no difference. Both modes, against the oracle."""
    env.init_sources()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    owner, holder, mixed = uid("big-owner"), uid("big-holder"), uid("big-mixed")
    persons = [
        # (original semantics: a SET repairs only keys the person has, gotcha 1)
        rr.PersonRow(owner, 1, json.dumps({"big": 1, "neg": 1, "nested": 1, "fits": 1}), 0, 2, at, 2),
        rr.PersonRow(holder, 1, '{"held": ' + BIG + ', "plan": "free"}', 0, 2, at, 2),
        rr.PersonRow(mixed, 1, json.dumps({"code": "", "big": 1}), 0, 2, at, 2),
    ]
    events = [
        rr.Event(
            uid("big-1"),
            1,
            "big-owner",
            owner,
            ts("2026-01-07 01:00:00"),
            '{"$set": {"big": '
            + BIG
            + ', "neg": '
            + NEGATIVE_BIG
            + ', "nested": {"n": ['
            + BIG
            + ', 1.50]}, "fits": 18446744073709551615}, "$set_once": {"first": '
            + BIG
            + "}}",
        ),
        # The same big integer is no difference for the person already holding it.
        rr.Event(
            uid("big-2"),
            1,
            "big-holder",
            holder,
            ts("2026-01-07 02:00:00"),
            '{"$set": {"held": ' + BIG + ', "plan": "pro"}}',
        ),
        # A real string of 19+ digits in the same event as a big integer: the string keeps its quotes.
        rr.Event(
            uid("big-3"),
            1,
            "big-mixed",
            mixed,
            ts("2026-01-07 03:00:00"),
            '{"$set": {"code": "98765432109876543210", "big": ' + BIG + "}}",
        ),
    ]
    env.insert_events(events)
    env.insert_persons(persons)
    env.drop_models()
    for seconds in (0, 3600):
        dbt_vars = {"bug_window_start": W0, "bug_window_end": W1, "now": NOW, "window_seconds": seconds}
        env.run(dbt_vars)
        assert_matches_oracle(env, dbt_vars)
        rows = {row[2]: row for row in env.diff_rows()}
        assert dict(zip(rows[owner][4], rows[owner][5], strict=True)) == {
            "big": BIG,
            "fits": "18446744073709551615",
            "neg": NEGATIVE_BIG,
            "nested": '{"n":[' + BIG + ",1.5]}",
        }
        assert dict(zip(rows[owner][7], rows[owner][8], strict=True)) == {"first": BIG}
        assert rows[holder][4:6] == (("plan",), ('"pro"',))
        assert dict(zip(rows[mixed][4], rows[mixed][5], strict=True)) == {
            "big": BIG,
            "code": '"98765432109876543210"',
        }


def test_clickhouse_uuid_order_model_of_the_oracle(env: mh.ModelsEnv) -> None:
    import random

    rng = random.Random(7)
    values = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(500)]
    values += [uuid.UUID(int=rng.getrandbits(64) << 64) for _ in range(50)]
    got = env.client.query("SELECT arraySort({u:Array(UUID)})", parameters={"u": values}).result_rows[0][0]
    assert got == sorted(values, key=rr.ch_uuid_key)


# --- seeded data, both modes, incremental builds, re-runs -------------------------------------------


@pytest.fixture(scope="module")
def seeded(env: mh.ModelsEnv) -> dict:
    from runner.local import seed

    config = seed.SeedConfig(teams=5, persons=2500, events=60_000, seed=20260107)
    dataset = seed.generate(config)
    env.init_sources()
    seed.write_clickhouse(dataset, env.client, env.source_database)
    env.drop_models()
    end = (seed.parse_time(config.start, "start") + timedelta(days=config.days)).strftime(rr.TIME_FORMAT)
    return {"config": config, "end": end}


def _without_run_columns(rows: list[tuple]) -> dict:
    """Diff rows keyed by (team, person) without mode and invocation id."""
    return {(r[0], r[2]): r[:12] + r[13:16] for r in rows}


def test_seeded_both_modes_match_the_rules_and_each_other(env: mh.ModelsEnv, seeded: dict) -> None:
    config = seeded["config"]
    base = {
        "bug_window_start": config.bug_window_start,
        "bug_window_end": config.bug_window_end,
        "person_batch_size": 97,
    }
    single = {**base, "window_seconds": 0}
    windowed = {**base, "window_seconds": 1800}

    # 1. Events up to W1 only: every difference lies in the bug window, so the modes must agree on
    #    every row, although single pass stores 1 window and windowed mode 38.
    env.run({**single, "now": config.bug_window_end})
    assert_matches_oracle(env, {**single, "now": config.bug_window_end})
    single_rows = _without_run_columns(env.diff_rows())
    env.run({**windowed, "now": config.bug_window_end})
    assert_matches_oracle(env, {**windowed, "now": config.bug_window_end})
    assert _without_run_columns(env.diff_rows()) == single_rows
    assert len(single_rows) > 100

    # 2. Incrementally on to the end of the data (about three more days, 150 windows of 30 minutes):
    #    each mode equals the rules computed from scratch ...
    end = seeded["end"]
    env.run({**single, "now": end})
    single_result = assert_matches_oracle(env, {**single, "now": end})
    single_rows = {(r[0], r[2]): r for r in env.diff_rows()}
    env.run({**windowed, "now": end})
    windowed_result = assert_matches_oracle(env, {**windowed, "now": end})
    windowed_rows = {(r[0], r[2]): r for r in env.diff_rows()}
    windows = env.query(
        f"SELECT uniqExact(window_start) FROM {env.target_schema}.int_person_property_ops__by_window "
        f"WHERE window_seconds = 1800 AND event_person_id != toUUID('00000000-0000-0000-0000-000000000000')"
    )[0][0]
    assert windows > 100

    # ... and the modes differ exactly where the design says (R8.11): windowed mode keeps the persons
    # with a difference inside the bug window, with the same entries as single pass; the persons only
    # single pass has are those whose differences all come from events after W1.
    assert set(windowed_rows) <= set(single_rows)
    for slot, row in windowed_rows.items():
        assert row[2:12] == single_rows[slot][2:12], slot
    only_single = set(single_rows) - set(windowed_rows)
    assert only_single == {slot for slot in single_result.diffs if slot not in windowed_result.affected}
    assert only_single, "the seeded data should contain persons whose only difference is after W1"


def test_seeded_rerun_crash_and_appended_events_leave_identical_results(
    env: mh.ModelsEnv, seeded: dict
) -> None:
    config = seeded["config"]
    end = seeded["end"]
    dbt_vars = {
        "bug_window_start": config.bug_window_start,
        "bug_window_end": config.bug_window_end,
        "window_seconds": 3600,
        "now": end,
    }
    ops_table = f"{env.target_schema}.int_person_property_ops__by_window"
    grid = "window_seconds = 3600"

    def ops_state() -> list[tuple]:
        return env.query(
            f"SELECT team_id, window_start, slice_start, ingested_slice, event_person_id, distinct_id, key, "
            f"max(last_set), min(first_set_once), "
            f"max(last_unset_at), max(events), max(operations), max(malformed_events) FROM {ops_table} "
            f"WHERE {grid} AND built_until IS NULL GROUP BY ALL ORDER BY ALL"
        )

    def physical_rows() -> int:
        return env.query(f"SELECT count() FROM {ops_table} WHERE {grid} AND built_until IS NULL")[0][0]

    env.run(dbt_vars)
    diff, summary = _without_run_columns(env.diff_rows()), [r[:10] for r in env.summary_rows()]
    aggregated = ops_state()

    # Background merges are stopped around the re-runs so that a second insert would stay visible.
    # Running twice reads again only the events ingested within the overlap (the last hour or two of
    # ingestion), and they merge into the same states.
    env.client.command(f"SYSTEM STOP MERGES {ops_table}")
    try:
        rows = physical_rows()
        env.run(dbt_vars)
        assert rows < physical_rows() < rows * 1.1
        assert ops_state() == aggregated
    finally:
        env.client.command(f"SYSTEM START MERGES {ops_table}")
    assert _without_run_columns(env.diff_rows()) == diff
    assert [r[:10] for r in env.summary_rows()] == summary

    # A crash after the insert and before the ledger row: forget this grid's ledger rows, so that the
    # next run inserts every slice a second time. The result is identical.
    env.client.command(
        f"ALTER TABLE {ops_table} DELETE WHERE {grid} AND built_until IS NOT NULL SETTINGS mutations_sync = 2"
    )
    env.client.command(f"SYSTEM STOP MERGES {ops_table}")
    try:
        rows = physical_rows()
        env.run(dbt_vars)
        assert physical_rows() >= rows + len(aggregated), "every slice should have been inserted again"
        assert ops_state() == aggregated
    finally:
        env.client.command(f"SYSTEM START MERGES {ops_table}")
    assert _without_run_columns(env.diff_rows()) == diff
    assert [r[:10] for r in env.summary_rows()] == summary

    # one more hour of events, appended later (a copy of the last hour, one hour on, new uuids): the
    # next build reads only the new slices and equals the rules computed over everything
    env.client.command(
        f"INSERT INTO {env.source_database}.events "
        "(uuid, event, properties, timestamp, team_id, distinct_id, "
        f"person_id, _timestamp) SELECT generateUUIDv4(rowNumberInAllBlocks()), event, properties, "
        f"timestamp + INTERVAL 1 HOUR, team_id, distinct_id, person_id, _timestamp "
        f"FROM {env.source_database}.events "
        f"WHERE timestamp >= toDateTime64('{end}', 6, 'UTC') - INTERVAL 1 HOUR"
    )
    later_vars = {**dbt_vars, "now": (ts(end) + timedelta(hours=1)).strftime(rr.TIME_FORMAT)}
    env.run(later_vars)
    new_slices = env.query(
        f"SELECT count(), min(slice_start) FROM {ops_table} WHERE {grid} AND built_until IS NULL "
        f"AND slice_start >= toDateTime64('{end}', 6, 'UTC')"
    )[0]
    assert new_slices[0] > 0 and mh.aware(new_slices[1]) == ts(end)
    assert_matches_oracle(env, later_vars)


# --- team vars: a build replaces its teams' rows and keeps the others -------------------------------


def test_team_vars_replace_only_the_selected_teams(env: mh.ModelsEnv, seeded: dict) -> None:
    config = seeded["config"]
    dbt_vars = {
        "bug_window_start": config.bug_window_start,
        "bug_window_end": config.bug_window_end,
        "now": seeded["end"],
    }
    env.run(dbt_vars)
    before = {(r[0], r[2]): r for r in env.diff_rows()}
    summary_before = {r[0]: r for r in env.summary_rows()}
    teams = sorted(summary_before)
    assert len(teams) >= 3

    # a build for two teams (team_ids, as a scheduler chunk would run it) replaces only their rows
    chunk = {**dbt_vars, "team_ids": teams[:2]}
    env.run(chunk)
    after = {(r[0], r[2]): r for r in env.diff_rows()}
    summary_after = {r[0]: r for r in env.summary_rows()}
    assert set(after) == set(before)
    for slot, row in after.items():
        if slot[0] in teams[:2]:
            assert row[16] != before[slot][16] and row[:12] == before[slot][:12]
        else:
            assert row == before[slot]
    assert {t for t, r in summary_after.items() if r[11] != summary_before[t][11]} == set(teams[:2])
    assert_matches_oracle(env, dbt_vars)  # the whole table still equals a full build

    # min/max/exclude select the same way; the oracle agrees on what the scope yields
    scoped = {**dbt_vars, "min_team_id": teams[1], "max_team_id": teams[-1], "exclude_team_ids": [teams[-1]]}
    env.run(scoped)
    result = env.oracle(mh.config_from_vars(scoped))
    expected = mh.oracle_content(result)
    got = {slot: value for slot, value in mh.diff_content(env.diff_rows()).items() if slot[0] in result.teams}
    assert got == expected, mh.explain_mismatch(got, expected)
    assert result.teams == teams[1:-1]


def test_dbt_tests_and_unit_tests_pass_on_the_built_models(env: mh.ModelsEnv, seeded: dict) -> None:
    config = seeded["config"]
    dbt_vars = {
        "bug_window_start": config.bug_window_start,
        "bug_window_end": config.bug_window_end,
        "now": seeded["end"],
        "window_seconds": 1800,
    }
    env.run(dbt_vars)
    results = env.dbt("test", dbt_vars)
    outcomes = {
        r.node.unique_id: str(r.status)
        for r in results.results
        if r.node.unique_id.startswith(("test.", "unit_test."))
    }
    assert outcomes and all(status == "pass" for status in outcomes.values()), outcomes
    unit = [uid for uid in outcomes if uid.startswith("unit_test.")]
    assert len(unit) >= 20
