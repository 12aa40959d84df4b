"""The oracle itself (tests/reference_rules.py), checked against the spec's examples by hand."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import UUID

import pytest
import reference_rules as rr

P = UUID("00000000-0000-0000-0000-0000000000a1")
OTHER = UUID("00000000-0000-0000-0000-0000000000a2")
AT = datetime(2026, 1, 1, tzinfo=UTC)


def when(text: str) -> datetime:
    return rr.utc(text)


def event(
    label: int, when_text: str, properties: dict | str, distinct: str = "d", person: UUID = P, team: int = 7
) -> rr.Event:
    text = properties if isinstance(properties, str) else json.dumps(properties)
    return rr.Event(UUID(int=label), team, distinct, person, when(when_text), text)


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("0.1", "0.1"),
        ("1.0", "1"),
        ("1E2", "100"),
        ("-0.0", "-0"),
        ("-0", "0"),
        ("1e-7", "1e-7"),
        ("2e-6", "0.000002"),
        ("0.000001", "0.000001"),
        ("1e20", "100000000000000000000"),
        ("1e21", "1e21"),
        ("12345678901234567890123.5", "1.2345678901234568e22"),
        ("5e-324", "5e-324"),
        ("3.14159265358979323846", "3.141592653589793"),
        ("18446744073709551615", "18446744073709551615"),
        ("18446744073709551616", '"18446744073709551616"'),
        ("-9223372036854775809", '"-9223372036854775809"'),
        ('"Zo\\u00eb \\ud83d\\ude80"', '"Zoë 🚀"'),
        ('"a\\/b"', '"a/b"'),
        ('"\\u0001\\u001f\\u007f"', '"\\u0001\\u001F\x7f"'),
        ('"\\u2028"', '"\\u2028"'),
        ('"q\\"\\\\"', '"q\\"\\\\"'),
        ('{"b": 1, "a": [1.0, null]}', '{"b":1,"a":[1,null]}'),
        ('{"k": 1, "k": 2}', '{"k":1,"k":2}'),
        ("true", "true"),
        ('""', '""'),
    ],
)
def test_ch_raw_reproduces_clickhouse_serialisation(text: str, raw: str) -> None:
    assert rr.ch_raw(rr.parse_json(text)) == raw


def test_parse_json_is_strict() -> None:
    for text in ("NaN", '{"a": Infinity}', "{'a': 1}", '{"a": 1,}', "", '{"a": 1'):
        assert not rr.is_valid_json(text)


def test_uuid_order_is_clickhouses() -> None:
    low_first = UUID("00000000-0000-0001-0000-000000000001")
    high_text = UUID("00000000-0000-0000-0000-000000000002")
    assert low_first > high_text  # as text / Python
    assert rr.ch_uuid_key(low_first) < rr.ch_uuid_key(high_text)  # as ClickHouse


def test_read_event_follows_r5() -> None:
    reading = rr.read_event(
        event(
            1,
            "2026-01-07 00:00:00",
            {
                "$set": {"plan": "pro", "$browser": "Chrome", "n": None, "empty": "", "obj": {"b": 1}},
                "$set_once": {"source": "ads"},
                "$unset": ["legacy", "$os", 5, {"x": 1}, True, None],
            },
        )
    )
    ops = [(o.kind, o.key, o.value, o.position) for o in reading.operations]
    assert ops == [
        ("set", "plan", '"pro"', 1),
        ("set", "empty", '""', 4),
        ("set", "obj", '{"b":1}', 5),
        ("set_once", "source", '"ads"', 1),
        ("unset", "legacy", None, 1),
        ("unset", "5", None, 3),
        ("unset", "", None, 4),
        ("unset", "true", None, 5),
        ("unset", "", None, 6),
    ]
    assert reading.has_operation_keys and not reading.malformed


def test_read_event_non_objects_malformed_and_duplicates() -> None:
    nothing = rr.read_event(
        event(1, "2026-01-07 00:00:00", {"$set": "x", "$set_once": None, "$unset": {"a": ""}})
    )
    assert nothing.operations == [] and nothing.has_operation_keys
    broken = rr.read_event(event(2, "2026-01-07 00:00:00", '{"$set": {"a": 1}'))
    assert broken.operations == [] and broken.malformed and not broken.has_operation_keys
    unrelated = rr.read_event(event(3, "2026-01-07 00:00:00", "not json at all"))
    assert not unrelated.malformed  # does not mention $set/$unset
    first = rr.read_event(event(4, "2026-01-07 00:00:00", '{"$set": {"a": 1}, "$set": {"a": 2}}'))
    assert [o.value for o in first.operations] == ["1"]


def test_live_overrides_take_the_highest_version() -> None:
    rows = [
        rr.OverrideRow(7, "d1", P, 0, 1, AT, 0, 0),
        rr.OverrideRow(7, "d1", OTHER, 0, 2, AT, 0, 0),
        rr.OverrideRow(7, "d2", P, 0, 1, AT, 0, 0),
        rr.OverrideRow(7, "d2", P, 1, 2, AT, 0, 0),
    ]
    assert rr.live_overrides(rows) == {(7, "d1"): OTHER}


def test_current_state_is_the_highest_version_and_tombstones_drop() -> None:
    rows = [
        rr.PersonRow(P, 7, '{"a": 1, "a": 2, "n": null}', 0, 3, AT, 0),
        rr.PersonRow(P, 7, '{"a": 0}', 0, 2, AT, 0),
        rr.PersonRow(OTHER, 7, "{}", 0, 1, AT, 0),
        rr.PersonRow(OTHER, 7, "{}", 1, 101, AT, 0),
    ]
    states = rr.current_states(rows)
    assert states == {(7, P): rr.State(3, {"a": "1", "n": "null"})}


def ops(*items: tuple) -> rr.KeyOps:
    key_ops = rr.KeyOps()
    for kind, at, value in items:
        key_ops.add(rr.Operation(kind, "k", value, when(at), UUID(int=1), 1))
    return key_ops


T1, T2, T3 = "2026-01-06 21:00:00", "2026-01-07 09:00:00", "2026-01-08 10:00:00"


@pytest.mark.parametrize(
    ("state", "key_ops", "kept"),
    [
        # R6.4 decision table, row by row; kept = (set, set_once, unset) after section 7
        ({}, ops(("set", T1, '"x"'), ("unset", T2, None)), (False, False, False)),
        ({}, ops(("set", T3, '"x"'), ("set_once", T1, '"once"'), ("unset", T2, None)), (False, True, False)),
        ({"k": '"x"'}, ops(("set", T2, '"x"'), ("set_once", T1, '"y"')), (False, False, False)),
        ({"k": '"x"'}, ops(("set", T2, '"y"')), (True, False, False)),
        ({"k": '"x"'}, ops(("set_once", T2, '"y"'), ("unset", T1, None)), (False, False, True)),
        ({"k": '"x"'}, ops(("set", T2, '"x"'), ("unset", T1, None)), (False, False, True)),
        ({"k": '"x"'}, ops(("set", T3, '"y"'), ("unset", T2, None)), (True, False, False)),
        ({"k": '"x"'}, ops(("set", T1, '"y"'), ("unset", T2, None)), (False, False, True)),
        ({"k": '"x"'}, ops(("set", T2, '"y"'), ("unset", T2, None)), (False, False, True)),  # R7.1 tie
        ({"k": "null"}, ops(("set_once", T1, '"y"')), (False, False, False)),  # gotcha 5
    ],
)
def test_decision_table(state: dict, key_ops: rr.KeyOps, kept: tuple) -> None:
    decision = rr.decide(key_ops, "k", rr.State(1, state))
    assert (decision.keep_set, decision.keep_set_once, decision.keep_unset) == kept


@pytest.mark.parametrize(
    ("left", "right", "differ"),
    [
        # SET compares JSON values (deliberate difference from the original's raw text / Python equality)
        ('{"b":1,"a":{"y":2,"x":1}}', '{"a":{"x":1,"y":2},"b":1}', False),  # key order, nested too
        ('"Z\\u00fcrich"', '"Zürich"', False),  # escapes
        ("1.0", "1", False),  # numbers by value
        ("true", "1", True),  # booleans are not numbers (Python: True == 1)
        ("false", "0", True),
        ('[1,"a"]', '["a",1]', True),  # arrays in order
        ('{"a":null}', "{}", True),  # a member holding null counts
        ('{"a":{}}', "{}", True),
        ("null", "{}", True),
        ('{"a":1,"a":1}', '{"a":1}', True),  # duplicate keys: raw text (ClickHouse refuses them)
        ('"x"', '"x"', False),
    ],
)
def test_set_comparison_is_by_json_value(left: str, right: str, differ: bool) -> None:
    assert rr.values_differ(left, right) is differ
    assert rr.values_differ(right, left) is differ
    state = rr.State(1, {"k": right})
    assert rr.decide(ops(("set", T1, left)), "k", state).keep_set is differ


def test_aggregation_ties_are_deterministic() -> None:
    key_ops = rr.KeyOps()
    low, high = UUID("00000000-0000-0001-0000-000000000001"), UUID("00000000-0000-0000-0000-000000000002")
    for uuid_, value in ((low, '"low"'), (high, '"high"')):
        key_ops.add(rr.Operation("set", "k", value, when(T1), uuid_, 1))
        key_ops.add(rr.Operation("set_once", "k", value, when(T1), uuid_, 1))
    assert key_ops.last_set[3] == b'"high"' and key_ops.first_set_once[3] == b'"low"'


def worked_example() -> tuple[list[rr.Event], list[rr.PersonRow], list[rr.OverrideRow]]:
    """Section 9's worked example."""
    events = [
        event(
            1,
            "2026-01-06 21:00:00",
            {"$set": {"plan": "pro", "$browser": "Chrome"}, "$set_once": {"source": "ads"}},
            distinct="anon",
            person=OTHER,
        ),
        event(2, "2026-01-07 09:00:00", {"$set": {"plan": "team"}, "$unset": ["legacy"]}, distinct="u1"),
        event(3, "2026-01-08 10:00:00", {"$set": {"plan": "enterprise"}}, distinct="u1"),
    ]
    persons = [rr.PersonRow(P, 7, json.dumps({"plan": "pro", "legacy": "x", "source": "seo"}), 0, 12, AT, 0)]
    overrides = [rr.OverrideRow(7, "anon", P, 0, 1, AT, 0, 0)]
    return events, persons, overrides


@pytest.mark.parametrize("window_seconds", [0, 3600])
def test_worked_example_in_both_modes(window_seconds: int) -> None:
    config = rr.Config(
        when("2026-01-06 20:01:00"),
        when("2026-01-07 14:52:00"),
        when("2026-01-20 00:00:00"),
        window_seconds=window_seconds,
    )
    result = rr.compute(config, *worked_example())
    assert result.teams == [7]
    diff = result.diffs[(7, P)]
    assert diff.baseline_version == 12 and diff.batch_index == 0
    assert diff.set_entries == [("plan", '"enterprise"', when("2026-01-08 10:00:00"))]
    assert diff.set_once_entries == []
    assert diff.unset_entries == [("legacy", when("2026-01-07 09:00:00"))]
    summary = result.summaries[7]
    assert (summary.events_scanned, summary.operations, summary.persons_with_diff, summary.batches) == (
        3,
        5,
        1,
        1,
    )


def test_windowed_mode_skips_persons_whose_only_difference_is_after_w1() -> None:
    events = [
        event(1, "2026-01-07 00:00:00", {"$set": {"plan": "pro"}}),  # no difference in the window
        event(2, "2026-01-09 00:00:00", {"$set_once": {"src": "ads"}}),
        event(3, "2026-01-09 01:00:00", {"$unset": ["src"]}),
    ]
    persons = [rr.PersonRow(P, 7, json.dumps({"plan": "pro"}), 0, 2, AT, 0)]
    single = rr.Config(when("2026-01-06 20:01:00"), when("2026-01-07 14:52:00"), when("2026-01-20 00:00:00"))
    windowed = rr.Config(single.bug_window_start, single.bug_window_end, single.now, window_seconds=3600)
    assert (7, P) in rr.compute(single, events, persons, []).diffs  # gotcha 3
    assert rr.compute(windowed, events, persons, []).diffs == {}


def test_team_filters() -> None:
    config = rr.Config(AT, AT, AT, team_ids=(1, 2, 3), min_team_id=2, max_team_id=9, exclude_team_ids=(3,))
    assert [t for t in range(12) if config.selects_team(t)] == [2]


def test_batches_follow_clickhouse_uuid_order() -> None:
    persons_ids = [
        UUID("00000000-0000-0001-0000-000000000001"),
        UUID("00000000-0000-0000-0000-000000000002"),
        UUID("00000000-0000-0000-0000-000000000003"),
    ]
    events = [
        event(i + 1, "2026-01-07 00:00:00", {"$set": {"k": 2}}, distinct=str(i), person=p)
        for i, p in enumerate(persons_ids)
    ]
    persons = [rr.PersonRow(p, 7, '{"k": 1}', 0, 1, AT, 0) for p in persons_ids]
    config = rr.Config(
        when("2026-01-06 20:01:00"),
        when("2026-01-07 14:52:00"),
        when("2026-01-20 00:00:00"),
        person_batch_size=2,
    )
    result = rr.compute(config, events, persons, [])
    assert [result.diffs[(7, p)].batch_index for p in persons_ids] == [0, 0, 1]
