"""The oracle's replay rules (tests/reference_rules.py, `semantics: replay`), checked by hand on every
ordering of SET / SET_ONCE / UNSET on a key, on ties, and against the mergeable per-window state the
models keep (randomised, fixed seeds)."""

from __future__ import annotations

import itertools
import json
import random
from datetime import timedelta
from uuid import UUID

import pytest
import reference_rules as rr

P = UUID("00000000-0000-0000-0000-0000000000a1")
W0, W1, NOW = rr.utc("2026-01-06 20:00:00"), rr.utc("2026-01-07 14:00:00"), rr.utc("2026-01-10 00:00:00")
T = [rr.utc(f"2026-01-07 0{hour}:00:00") for hour in range(1, 4)]
VALUE = {rr.SET: '"s"', rr.SET_ONCE: '"o"', rr.UNSET: None}
LETTER = {"S": rr.SET, "O": rr.SET_ONCE, "U": rr.UNSET}


def op(kind: str, at, label: int = 1, position: int = 1, value: str | None = "") -> rr.Operation:
    return rr.Operation(kind, "k", VALUE[kind] if value == "" else value, at, UUID(int=label), position)


def sequence(letters: str) -> list[rr.Operation]:
    """One operation per letter, at T[0], T[1], T[2] in that order, each from its own event."""
    return [op(LETTER[letter], T[i], label=10 + i) for i, letter in enumerate(letters)]


# letters in time order -> final value when the key is absent before / present ('"p"') before
EVERY_ORDERING = {
    "S": ('"s"', '"s"'),
    "O": ('"o"', '"p"'),
    "U": (None, None),
    "SO": ('"s"', '"s"'),
    "OS": ('"s"', '"s"'),
    "SU": (None, None),
    "US": ('"s"', '"s"'),
    "OU": (None, None),
    "UO": ('"o"', '"o"'),
    "SOU": (None, None),
    "SUO": ('"o"', '"o"'),
    "OSU": (None, None),
    "OUS": ('"s"', '"s"'),
    "USO": ('"s"', '"s"'),
    "UOS": ('"s"', '"s"'),
}


def test_the_table_covers_every_ordering() -> None:
    orderings = {"".join(p) for n in (1, 2, 3) for p in itertools.permutations("SOU", n)}
    assert set(EVERY_ORDERING) == orderings


@pytest.mark.parametrize("letters", sorted(EVERY_ORDERING))
@pytest.mark.parametrize("before", [None, '"p"'], ids=["absent", "present"])
def test_every_ordering_replays_in_time_order(letters: str, before: str | None) -> None:
    expected = EVERY_ORDERING[letters][0 if before is None else 1]
    ops = sequence(letters)
    assert rr.replay_key(ops, before)[0] == expected
    # the mergeable state gives the same, whole and split into one part per operation
    assert rr.ReplayState.of(ops).result(before)[0] == expected
    merged = rr.ReplayState()
    for single in ops:
        merged = merged.then(rr.ReplayState.of([single]))
    assert merged.result(before)[0] == expected
    # and so does the shuffled input (replay sorts by time, not by arrival)
    assert rr.replay_key(list(reversed(ops)), before)[0] == expected


@pytest.mark.parametrize(
    ("letters", "before", "entry"),
    [
        ("S", None, (rr.SET, '"s"', 0)),  # a key first set in the window is restored (gotcha 1)
        ("S", '"s"', None),
        ("O", None, (rr.SET_ONCE, '"o"', 0)),
        ("O", '"p"', None),
        ("U", '"p"', (rr.UNSET, "", 0)),
        ("U", None, None),
        ("OU", None, None),  # gotcha 3: the original adds the key, replay leaves it absent
        ("UO", '"p"', (rr.SET, '"o"', 1)),  # the SET_ONCE value must overwrite: a SET entry
        ("UO", None, (rr.SET_ONCE, '"o"', 1)),
        ("OS", None, (rr.SET, '"s"', 1)),  # gotcha 4: the later SET wins
        ("US", '"s"', None),  # gotcha 2: the re-add already reached the person, nothing to do
        ("SUO", '"o"', None),
    ],
)
def test_diff_entries_of_a_replayed_key(letters: str, before: str | None, entry: tuple | None) -> None:
    state = rr.State(1, {} if before is None else {"k": before})
    expected = None if entry is None else (entry[0], entry[1], T[entry[2]])
    assert rr.replay_changes("k", sequence(letters), state) == expected


def test_values_compare_as_json_values() -> None:
    state = rr.State(1, {"k": '{"a":1,"b":2.0}'})
    same = [op(rr.SET, T[0], value='{"b":2,"a":1}')]
    assert rr.replay_changes("k", same, state) is None


def test_equal_timestamps_set_once_then_set_then_unset() -> None:
    at = T[0]
    # one event, all three kinds: PostHog's ingestion applies $set_once, $set, then $unset
    assert rr.replay_key([op(rr.UNSET, at), op(rr.SET, at), op(rr.SET_ONCE, at)], '"p"')[0] is None
    # different events at the same timestamp: the kind decides before the event uuid (UNSET wins ties,
    # as in R7.1 / R7.2), whatever the uuids
    for set_label, unset_label in ((1, 2), (2, 1)):
        ops = [op(rr.SET, at, label=set_label), op(rr.UNSET, at, label=unset_label)]
        assert rr.replay_key(ops, '"p"')[0] is None
        ops = [op(rr.SET_ONCE, at, label=set_label), op(rr.UNSET, at, label=unset_label)]
        assert rr.replay_key(ops, None)[0] is None
    assert rr.replay_key([op(rr.SET, at, label=2), op(rr.SET_ONCE, at, label=1)], None)[0] == '"s"'


def test_equal_timestamps_same_kind_follow_r59() -> None:
    at = T[0]
    low, high = UUID("00000000-0000-0001-0000-000000000001"), UUID("00000000-0000-0000-0000-000000000002")
    assert rr.ch_uuid_key(low) < rr.ch_uuid_key(high)  # ClickHouse order, not Python's
    sets = [
        rr.Operation(rr.SET, "k", '"high"', at, high, 1),
        rr.Operation(rr.SET, "k", '"low"', at, low, 1),
    ]
    assert rr.replay_key(sets, None)[0] == '"high"'  # the latest SET: the greatest uuid
    onces = [
        rr.Operation(rr.SET_ONCE, "k", '"high"', at, high, 1),
        rr.Operation(rr.SET_ONCE, "k", '"low"', at, low, 1),
    ]
    assert rr.replay_key(onces, None)[0] == '"low"'  # the first SET_ONCE: the least uuid
    same_event = [
        rr.Operation(rr.SET, "k", '"b"', at, low, 2),
        rr.Operation(rr.SET, "k", '"a"', at, low, 1),
        rr.Operation(rr.SET, "k", '"z"', at, low, 2),
    ]
    assert rr.replay_key(same_event, None)[0] == '"z"'  # position, then value
    for ops in (sets, onces, same_event):
        assert rr.ReplayState.of(ops).result(None)[0] == rr.replay_key(ops, None)[0]


# --- the mergeable state equals per-event replay -------------------------------------------------


def random_ops(rng: random.Random, count: int) -> list[rr.Operation]:
    base = T[0]
    ops = []
    for _ in range(count):
        kind = rng.choice((rr.SET, rr.SET_ONCE, rr.UNSET))
        at = base + timedelta(seconds=rng.randrange(8))  # few distinct timestamps: many ties
        value = None if kind == rr.UNSET else json.dumps(rng.choice(["a", "b", 1, 1.0, {"x": 1}]))
        ops.append(
            rr.Operation(
                kind,
                "k",
                value,
                at,
                UUID(int=rng.randrange(1, 6) << rng.choice((0, 64))),
                rng.randrange(1, 3),
            )
        )
    return ops


def time_ordered_parts(rng: random.Random, ops: list[rr.Operation]) -> list[list[rr.Operation]]:
    """Split at random timestamp boundaries (what windows and slices do): equal timestamps stay together."""
    stamps = sorted({o.timestamp for o in ops})
    cuts = sorted(rng.sample(stamps, rng.randrange(0, len(stamps) + 1)))
    parts: list[list[rr.Operation]] = []
    bounds = [None, *cuts, None]
    for low, high in itertools.pairwise(bounds):
        parts.append(
            [o for o in ops if (low is None or o.timestamp >= low) and (high is None or o.timestamp < high)]
        )
    return parts


@pytest.mark.parametrize("seed", range(20))
def test_merged_state_equals_per_event_replay(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        ops = random_ops(rng, rng.randrange(1, 9))
        before = rng.choice([None, '"a"', '"p"'])
        expected_value, source = rr.replay_key(ops, before)
        whole = rr.ReplayState.of(ops)
        value, kind, at = whole.result(before)
        assert value == expected_value
        if source is None:
            assert kind is None
        else:
            assert (kind, at) == (source.kind, source.timestamp)

        parts = time_ordered_parts(rng, ops)
        states = [rr.ReplayState.of(p) for p in parts]
        folded = rr.ReplayState()
        for state in states:
            folded = folded.then(state)
        assert folded == whole  # the ordered merge loses nothing
        # the models' order-free read, with a part inserted twice and a time-prefix of one part
        extra = []
        if parts[0]:
            extra.append(states[0])
            prefix_end = rng.choice(sorted({o.timestamp for o in parts[0]}))
            extra.append(rr.ReplayState.of([o for o in parts[0] if o.timestamp < prefix_end]))
        read = rr.replay_from_parts(rng.sample(states + extra, len(states + extra)))
        assert read.result(before) == whole.result(before)


# --- whole computations: a replay diff, once applied, is a fixed point ------------------------------


def event(label: int, at, properties: dict, distinct: str = "d", person: UUID = P) -> rr.Event:
    return rr.Event(UUID(int=label), 7, distinct, person, at, json.dumps(properties))


def apply(state_text: str, row: rr.DiffRow) -> str:
    props = json.loads(state_text)
    for key, value, _ in row.set_once_entries:
        props.setdefault(key, json.loads(value))
    for key, value, _ in row.set_entries:
        props[key] = json.loads(value)
    for key, _ in row.unset_entries:
        props.pop(key, None)
    return json.dumps(props)


@pytest.mark.parametrize("window_seconds", [0, 3600])
@pytest.mark.parametrize("seed", range(10))
def test_a_replay_repair_leaves_nothing_for_the_next_build(seed: int, window_seconds: int) -> None:
    rng = random.Random(1000 + seed)
    keys = ["a", "b", "c", "d"]
    persons = [UUID(int=0xB00 + i) for i in range(12)]
    events, rows = [], []
    for i, person in enumerate(persons):
        start = {k: rng.choice(["x", "y", 2]) for k in keys if rng.random() < 0.5}
        rows.append(rr.PersonRow(person, 7, json.dumps(start), 0, 1, W0, i))
        for n in range(rng.randrange(1, 10)):
            at = W0 + timedelta(minutes=rng.randrange(0, 60 * 30))
            kind = rng.choice(["$set", "$set_once", "$unset"])
            key = rng.choice(keys)
            props = {"$unset": [key]} if kind == "$unset" else {kind: {key: rng.choice(["x", "y", "z", 2])}}
            events.append(event(i * 100 + n + 1, at, props, distinct=f"d{i}", person=person))
    config = rr.Config(W0, W1, NOW, window_seconds=window_seconds, semantics="replay")
    first = rr.compute(config, events, rows, [])
    assert first.diffs, "the random data should need a repair"
    repaired = [
        rr.PersonRow(r.id, 7, apply(r.properties, first.diffs[(7, r.id)]), 0, 2, W0, 99)
        for r in rows
        if (7, r.id) in first.diffs
    ]
    second = rr.compute(config, events, rows + repaired, [])
    assert not set(second.diffs) & set(first.diffs)


def test_the_original_rules_leave_an_artifact_that_replay_does_not() -> None:
    # gotcha 3: SET_ONCE then UNSET, key absent now
    rows = [rr.PersonRow(P, 7, "{}", 0, 1, W0, 0)]
    events = [
        event(1, T[0], {"$set_once": {"k": "o"}}),
        event(2, T[1], {"$unset": ["k"]}),
    ]
    original = rr.compute(rr.Config(W0, W1, NOW), events, rows, [])
    assert original.diffs[(7, P)].set_once_entries == [("k", '"o"', T[0])]
    replay = rr.compute(rr.Config(W0, W1, NOW, semantics="replay"), events, rows, [])
    assert replay.diffs == {}
    assert replay.affected == {(7, P)}
