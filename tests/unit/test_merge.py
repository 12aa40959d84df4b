"""Merge rules of apply (spec §7, R9.4–R9.9, §2.7), including the worked example of §9."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from runner.rules.merge import (
    BadDiffValue,
    PersonDiff,
    concurrently_changed_keys,
    conflict_filter,
    decode_diff,
    diff_entries,
    iso_timestamp,
    kafka_created_at,
    kafka_message,
    pending_operations_json,
    simple_merge,
    three_way_merge,
)
from runner.rules.scheduling import chunk_id

P = UUID("0190f3a8-7c2e-7b4a-9c1d-2e3f4a5b6c7d")
# Timestamps travel as R9.7 texts.
T0 = "2026-01-06T21:00:00+00:00"  # e1
T1 = "2026-01-07T09:00:00+00:00"  # e2
T2 = "2026-01-08T10:00:00+00:00"  # e3 (after W1)


def diff(set_=None, set_once=None, unset=None, baseline=12) -> PersonDiff:
    return PersonDiff(7, P, baseline, dict(set_ or {}), dict(set_once or {}), dict(unset or {}))


def pending_operations(d: PersonDiff) -> list:
    return json.loads(pending_operations_json(d))


# --- worked example (§9) ------------------------------------------------------------------------------

WORKED = diff(set_={"plan": ("enterprise", T2)}, unset={"legacy": T1})
CH_STATE_V12 = {"plan": "pro", "legacy": "x", "source": "seo"}


def test_worked_example_simple_merge():
    merged = simple_merge(CH_STATE_V12, WORKED)
    assert merged.changed
    assert merged.properties == {"plan": "enterprise", "source": "seo"}
    updated, operation = merged.apply_metadata({"plan": "2026-01-01T00:00:00+00:00", "legacy": "x"}, None)
    assert updated == {"plan": "2026-01-08T10:00:00+00:00"}
    assert operation == {"plan": "set"}
    assert pending_operations(WORKED) == [
        {"key": "plan", "value": "enterprise", "timestamp": "2026-01-08T10:00:00+00:00", "operation": "set"},
        {"key": "legacy", "value": None, "timestamp": "2026-01-07T09:00:00+00:00", "operation": "unset"},
    ]


def test_worked_example_variant_three_way_merge():
    """Postgres at 13 because ingestion set legacy = "y": SET plan applies, UNSET legacy is skipped."""
    current = {"plan": "pro", "legacy": "y", "source": "seo"}
    assert concurrently_changed_keys(CH_STATE_V12, current) == {"legacy"}
    merged = three_way_merge(CH_STATE_V12, current, WORKED)
    assert merged.changed
    assert merged.properties == {"plan": "enterprise", "legacy": "y", "source": "seo"}
    assert merged.apply_metadata({}, {}) == ({"plan": T2}, {"plan": "set"})
    assert merged.metadata_removed == []


# --- simple merge (R9.4) --------------------------------------------------------------------------


def test_simple_merge_set_once_only_fills_absent_keys():
    merged = simple_merge({"a": 1}, diff(set_once={"a": (2, T0), "b": (3, T0)}))
    assert merged.properties == {"a": 1, "b": 3}
    assert merged.apply_metadata(None, None) == ({"b": T0}, {"b": "set_once"})
    assert merged.changed


def test_simple_merge_set_once_on_present_key_is_no_change():
    merged = simple_merge({"a": None}, diff(set_once={"a": (2, T0)}))
    assert not merged.changed
    assert merged.properties == {"a": None}


def test_simple_merge_set_overwrites_without_timestamp_comparison():
    merged = simple_merge({"a": 1}, diff(set_={"a": (2, T0)}))
    assert merged.changed
    assert merged.properties == {"a": 2}
    # no timestamp comparison with the stored metadata (R2.5)
    assert merged.apply_metadata({"a": "2030-01-01T00:00:00+00:00"}, {"a": "set_once"}) == (
        {"a": T0},
        {"a": "set"},
    )


def test_simple_merge_set_of_the_value_postgres_holds_is_no_change():
    # deliberate difference from gotcha 20: no version bump, no republish for a no-op
    nested = {"city": "Zürich", "geo": {"lat": 1.5, "lon": 2}}
    merged = simple_merge(
        {"a": 1, "addr": nested}, diff(set_={"a": (1.0, T0), "addr": (dict(reversed(nested.items())), T0)})
    )
    assert not merged.changed
    assert merged.properties == {"a": 1, "addr": nested}


def test_simple_merge_set_distinguishes_booleans_from_numbers():
    merged = simple_merge({"a": 1}, diff(set_={"a": (True, T0)}))
    assert merged.changed
    assert merged.properties == {"a": True}


def test_simple_merge_order_set_once_then_set_then_unset():
    merged = simple_merge({}, diff(set_={"a": ("set", T1)}, set_once={"a": ("once", T0)}))
    assert merged.properties == {"a": "set"}
    assert merged.apply_metadata(None, None) == ({"a": T1}, {"a": "set"})


def test_simple_merge_unset_of_absent_key_is_no_change():
    merged = simple_merge({"a": 1}, diff(unset={"gone": T0}))
    assert not merged.changed
    assert merged.properties == {"a": 1}


def test_simple_merge_unset_clears_metadata_and_null_metadata_becomes_maps():
    merged = simple_merge({"a": 1, "b": 2}, diff(unset={"a": T0}))
    assert merged.properties == {"b": 2}
    assert merged.metadata_removed == ["a"]
    assert merged.apply_metadata({"a": "x", "b": "y"}, {"a": "set", "b": "set"}) == ({"b": "y"}, {"b": "set"})
    untouched = simple_merge({"a": 1}, diff(unset={"zz": T0}))
    assert untouched.apply_metadata(None, None) == ({}, {})


def test_simple_merge_nothing_to_do():
    assert not simple_merge({"a": 1}, diff()).changed


def test_metadata_json_is_the_delta_to_set():
    merged = simple_merge({}, diff(set_={"a": (1, T1)}, set_once={"b": (2, T0)}))
    assert merged.metadata_json() == (
        json.dumps({"b": T0, "a": T1}),
        json.dumps({"b": "set_once", "a": "set"}),
    )


def test_merges_do_not_mutate_their_inputs():
    props = {"a": 1}
    simple_merge(props, diff(set_={"a": (2, T0)}, unset={"b": T0}))
    three_way_merge({"a": 1}, props, diff(set_={"a": (2, T0)}))
    assert props == {"a": 1}


# --- three-way merge (R9.5) -----------------------------------------------------------------------


def test_three_way_keeps_keys_added_concurrently_and_untouched_keys():
    base = {"a": 1}
    current = {"a": 1, "new": "x", "other": True}
    merged = three_way_merge(base, current, diff(set_={"a": (2, T0)}))
    assert merged.properties == {"a": 2, "new": "x", "other": True}
    assert merged.apply_metadata({"new": "t"}, None) == ({"new": "t", "a": T0}, {"a": "set"})


def test_three_way_postgres_wins_concurrently_changed_keys():
    base = {"a": 1, "b": 1, "c": 1}
    current = {"a": 9, "c": 1, "d": 4}  # a changed, b removed, d added concurrently
    d = diff(set_={"a": (2, T0), "b": (2, T0), "d": (5, T0)}, set_once={"b": (7, T0)}, unset={"c": T0})
    merged = three_way_merge(base, current, d)
    assert merged.properties == {"a": 9, "d": 4}  # only the UNSET of c applied
    assert merged.changed and merged.metadata_removed == ["c"] and merged.metadata_set == {}


def test_three_way_set_once_needs_absence_in_postgres_and_no_concurrent_change():
    assert three_way_merge({}, {}, diff(set_once={"k": (1, T0)})).properties == {"k": 1}
    assert not three_way_merge({}, {"k": 0}, diff(set_once={"k": (1, T0)})).changed


def test_three_way_unset_needs_presence_in_postgres():
    assert not three_way_merge({}, {"a": 1}, diff(unset={"gone": T0})).changed


def test_three_way_absent_equals_null_and_python_equality():
    assert concurrently_changed_keys({"a": None}, {}) == set()
    assert concurrently_changed_keys({"n": 1}, {"n": 1.0}) == set()
    assert concurrently_changed_keys({"n": 1}, {"n": True}) == set()  # Python: True == 1
    assert concurrently_changed_keys({"o": {"x": 1, "y": 2}}, {"o": {"y": 2, "x": 1}}) == set()
    assert concurrently_changed_keys({"l": [1, 2]}, {"l": [2, 1]}) == {"l"}


def test_three_way_nothing_applies_is_no_change():
    merged = three_way_merge({"a": 1}, {"a": 2}, diff(set_={"a": (3, T0)}))
    assert not merged.changed
    assert merged.properties == {"a": 2}


# --- conflict filter (§7) -------------------------------------------------------------------------


def test_conflict_filter_set_after_unset_keeps_set():
    d = conflict_filter(diff(set_={"k": (1, T1)}, unset={"k": T0}))
    assert d.set == {"k": (1, T1)} and d.unset == {}


def test_conflict_filter_equal_timestamps_unset_wins():
    d = conflict_filter(diff(set_={"k": (1, T0)}, unset={"k": T0}))
    assert d.set == {} and d.unset == {"k": T0}


def test_conflict_filter_set_once_against_unset():
    later = conflict_filter(diff(set_once={"k": (1, T1)}, unset={"k": T0}))
    assert later.set_once == {"k": (1, T1)} and later.unset == {}
    earlier = conflict_filter(diff(set_once={"k": (1, T0)}, unset={"k": T1}))
    assert earlier.set_once == {} and earlier.unset == {"k": T1}


def test_conflict_filter_orders_fractions_by_time():
    """Timestamp texts compare in time order: a zero fraction (no digits) sorts before any other."""
    whole = iso_timestamp(datetime(2026, 1, 7, 9, 0, tzinfo=UTC))
    tiny = iso_timestamp(datetime(2026, 1, 7, 9, 0, 0, 1, tzinfo=UTC))
    assert whole < tiny
    d = conflict_filter(diff(set_={"k": (1, tiny)}, unset={"k": whole}))
    assert d.set == {"k": (1, tiny)} and d.unset == {}
    d = conflict_filter(diff(set_={"k": (1, whole)}, unset={"k": tiny}))
    assert d.set == {} and d.unset == {"k": tiny}


def test_conflict_filter_uses_original_unset_timestamps_for_both_passes():
    # SET later than UNSET removes the UNSET; SET_ONCE earlier than the *original* UNSET is still dropped.
    d = conflict_filter(diff(set_={"k": (1, T2)}, set_once={"k": (2, T0)}, unset={"k": T1}))
    assert d.set == {"k": (1, T2)} and d.set_once == {} and d.unset == {}
    # SET loses, SET_ONCE wins: UNSET removed by the second pass.
    d = conflict_filter(diff(set_={"k": (1, T0)}, set_once={"k": (2, T2)}, unset={"k": T1}))
    assert d.set == {} and d.set_once == {"k": (2, T2)} and d.unset == {}


def test_conflict_filter_is_idempotent_and_keeps_unrelated_entries():
    d = diff(set_={"k": (1, T0), "x": (1, T0)}, set_once={"y": (2, T0)}, unset={"k": T1, "z": T0})
    once = conflict_filter(d)
    assert conflict_filter(once) is once
    assert once.set == {"x": (1, T0)} and once.set_once == {"y": (2, T0)} and once.unset == {"k": T1, "z": T0}


# --- values and formats ---------------------------------------------------------------------------


def test_decode_diff_types_values_and_reads_naive_timestamps_as_utc():
    naive = datetime(2026, 1, 7, 9, 0)
    d = decode_diff(
        7,
        P,
        3,
        [("s", '"x"', naive), ("n", "1.0", naive), ("o", '{"b":1,"a":[1,true]}', naive), ("e", '""', T1)],
        [("once", "12", naive)],
        [("u", naive)],
    )
    assert d.set == {"s": ("x", T1), "n": (1.0, T1), "o": ({"b": 1, "a": [1, True]}, T1), "e": ("", T1)}
    assert isinstance(d.set["n"][0], float)
    assert d.set_once == {"once": (12, T1)}
    assert d.unset == {"u": T1}


def test_decode_diff_rejects_invalid_json_naming_the_person():
    with pytest.raises(BadDiffValue, match="value of 'bad'"):
        decode_diff(7, P, 3, [("bad", "{nope", T0)], [], [])


def test_iso_timestamp_drops_zero_microseconds():
    assert iso_timestamp(datetime(2026, 1, 7, 14, 52, tzinfo=UTC)) == "2026-01-07T14:52:00+00:00"
    assert (
        iso_timestamp(datetime(2026, 1, 7, 14, 52, 0, 123456, tzinfo=UTC))
        == "2026-01-07T14:52:00.123456+00:00"
    )
    cet = timezone(timedelta(hours=1))
    assert iso_timestamp(datetime(2026, 1, 7, 15, 52, tzinfo=cet)) == "2026-01-07T14:52:00+00:00"


def test_diff_entries_for_json_output():
    set_values, set_once_values, unset_keys, timestamps = diff_entries(
        diff(set_={"a": ([1], T0)}, set_once={"b": ("x", T1)}, unset={"c": T2})
    )
    assert set_values == {"a": [1]} and set_once_values == {"b": "x"} and unset_keys == ["c"]
    assert timestamps == {"set": {"a": T0}, "set_once": {"b": T1}, "unset": {"c": T2}}


def test_pending_operations_lists_set_then_set_once_then_unset():
    d = diff(unset={"u": T2}, set_once={"o": (1, T1)}, set_={"s": (True, T0), 'qu"ote': ({"n": [1.5]}, T0)})
    assert pending_operations(d) == [
        {"key": "s", "value": True, "timestamp": T0, "operation": "set"},
        {"key": 'qu"ote', "value": {"n": [1.5]}, "timestamp": T0, "operation": "set"},
        {"key": "o", "value": 1, "timestamp": T1, "operation": "set_once"},
        {"key": "u", "value": None, "timestamp": T2, "operation": "unset"},
    ]


@pytest.mark.parametrize(
    "properties",
    [
        {"name": "Zoë", "n": 1},
        {},
        {"q": 'a "quoted" \\ back\nslash', "f": 1e16, "u": "\u2028 日本", "x": None},
    ],
)
def test_kafka_message_is_what_pythons_json_encoder_writes(properties):
    created = datetime(2025, 12, 31, 23, 30, 0, 5, tzinfo=timezone(timedelta(hours=-2)))
    properties_json = json.dumps(properties)
    text = kafka_message(P, 7, properties_json, True, kafka_created_at(created), 14)
    expected = {
        "id": str(P),
        "team_id": 7,
        "properties": properties_json,
        "is_identified": 1,
        "is_deleted": 0,
        "created_at": "2026-01-01 01:30:00.000005",
        "version": 14,
    }
    assert text == json.dumps(expected)
    assert json.loads(json.loads(text)["properties"]) == properties


def test_kafka_message_exact_text():
    text = kafka_message(P, 7, json.dumps({"name": "Zoë"}), False, "2026-01-01 01:30:00.000005", 14)
    assert text == (
        '{"id": "0190f3a8-7c2e-7b4a-9c1d-2e3f4a5b6c7d", "team_id": 7, '
        '"properties": "{\\"name\\": \\"Zo\\\\u00eb\\"}", '
        '"is_identified": 0, "is_deleted": 0, "created_at": "2026-01-01 01:30:00.000005", "version": 14}'
    )


def test_kafka_created_at_defaults_to_now_in_utc():
    now = datetime(2026, 1, 20, 8, 0, tzinfo=UTC)
    assert kafka_created_at(None, now) == "2026-01-20 08:00:00.000000"


def test_chunk_id():
    assert chunk_id([5]) == "team_5"
    assert chunk_id([2, 5, 9]) == "teams_2_9"


# --- exact numbers and values Postgres cannot store (issue 11, faults 1 and 2) ----------------------


def test_json_loads_keeps_numbers_a_double_cannot_hold():
    from decimal import Decimal

    from runner.rules.merge import exact_float, json_equal, json_loads

    value = json_loads(
        '{"p": 0.30000000000000000001, "h": 1e400, "t": 1e-400, "i": 123456789012345678901234567890}'
    )
    assert value == {
        "p": Decimal("0.30000000000000000001"),
        "h": Decimal("1e400"),
        "t": Decimal("1e-400"),
        "i": 123456789012345678901234567890,
    }
    assert json_loads(b'{"a": 0.1, "b": 2.5, "c": "1e5 in a string"}') == {
        "a": 0.1,
        "b": 2.5,
        "c": "1e5 in a string",
    }
    assert exact_float("1.50") == 1.5 and type(exact_float("1.50")) is float
    assert exact_float("-0.0") == 0.0
    # Equal values compare equal whichever way they were decoded; distinct ones never do.
    assert json_equal(json_loads("0.30000000000000000001"), 0.3) is False
    assert json_equal(json_loads("[1e2]")[0], 100)
    # As jsonb's `=`: a number and the exact value of the double nearest to it are distinct values
    # (Python's float == Decimal compares the double's binary value and says equal).
    nearest = "0.1000000000000000055511151231257827021181583404541015625"
    assert json_equal(json_loads("0.1"), json_loads(nearest)) is False
    assert json_equal(json_loads(nearest), json_loads("0.1")) is False
    assert (
        json_equal(
            json_loads('{"x": [0.3]}'),
            json_loads('{"x": [0.299999999999999988897769753748434595763683319091796875]}'),
        )
        is False
    )
    assert json_equal(json_loads("0.10"), json_loads("0.1000000000000000000000"))
    assert json_equal(json_loads("1.5"), json_loads("1.50000000000000000000"))
    assert json_equal(json_loads("-2.5e-3"), json_loads("-0.0025000000000000000000"))


def test_json_dumps_writes_exact_numbers_as_their_text():
    from runner.rules.merge import json_dumps, json_loads

    text = '{"p": 0.30000000000000000001, "n": [1e400, {"x": 2}], "s": "Zo\\u00eb"}'
    assert json_loads(json_dumps(json_loads(text))) == json_loads(text)
    assert json_dumps({"a": 1, "b": [True, None]}) == json.dumps({"a": 1, "b": [True, None]})


def test_unstorable_names_nul_characters_and_lone_surrogates():
    from runner.rules.merge import unstorable

    ok = PersonDiff(1, P, 1, set={"a": ("x", T1)}, set_once={"b": ({"c": [1, "d"]}, T1)}, unset={"e": T1})
    assert unstorable(ok) is None
    assert "NUL" in (unstorable(PersonDiff(1, P, 1, set_once={"a": ("a\x00b", T1)})) or "")
    assert "NUL" in (unstorable(PersonDiff(1, P, 1, set={"k\x00": ("v", T1)})) or "")
    assert "NUL" in (unstorable(PersonDiff(1, P, 1, set={"k": ({"n": ["\x00"]}, T1)})) or "")
    assert "surrogate" in (unstorable(PersonDiff(1, P, 1, set={"k": ("\ud800", T1)})) or "")
    assert "NUL" in (unstorable(PersonDiff(1, P, 1, unset={"u\x00": T1})) or "")


def test_dropped_keys_are_those_the_merge_does_not_write():
    diff = PersonDiff(
        1,
        P,
        3,
        set={"same": ("v", T1), "new": ("n", T1), "both": ("s", T1)},
        set_once={"present": ("x", T1), "absent": ("y", T1), "both": ("o", T1)},
    )
    merged = simple_merge({"same": "v", "present": 1}, diff)
    set_dropped, set_once_dropped = merged.dropped(diff)
    assert set_dropped == ["same"]
    assert set_once_dropped == ["present", "both"]  # `both` is written by SET, which wins
    assert diff.value_maps() == (
        '{"same": "v", "new": "n", "both": "s"}',
        '{"present": "x", "absent": "y", "both": "o"}',
    )


@pytest.mark.parametrize(
    ("text", "risky"),
    [
        (b'{"a": 1e5}', True),
        (b'{"a":-2.5E+3}', True),
        (b"[1,2e5]", True),
        (b"1e400", True),
        (b'{"a": 0.30000000000000000001}', True),
        (b'{"a": 12345678901234567890}', True),
        (b'{"id": "0190f3a8-7c2e-7b4a-9c1d-2e3f4a5b6c7d", "e": "user1e5@x"}', False),
        (b'{"a": 1.5, "b": -12, "c": 123456789012345}', False),
    ],
)
def test_risky_numbers_are_found_without_decoding(text, risky):
    from runner.rules.merge import _risky_number

    assert _risky_number(text) is risky
