"""Issue 22: the set-based write (one statement per chunk decides and writes the persons at their
baseline version) gives exactly what the per-person path gives: the same persons, backups, outbox rows,
Kafka messages, outcomes and counts, byte for byte, over cases chosen where an SQL decision could drift
from the Python rules. The same persons are seeded into two teams; one is applied per person, the other
set-based; their rows are compared with the uuids and team ids mapped."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from apply_support import (
    SCHEMA,
    TS,
    Diff,
    insert_ch_persons,
    insert_diffs,
    insert_pg_person,
    insert_summary,
    new_uuid,
)
from kafka_util import read_topic

from runner.rules.merge import conflict_filter, unstorable
from runner.stores import apply_sets, diffs

pytestmark = pytest.mark.integration

LATER = TS + timedelta(seconds=5)
EARLIER = TS - timedelta(seconds=5)
PLAIN = '{"plan": "free", "n": 1, "flag": true, "gone": "x", "nested": {"a": [1, 2.50]}, "nul": null}'

# (stored properties text, version, properties_last_updated_at text, properties_last_operation text,
#  SET, SET_ONCE, UNSET); values are raw JSON texts, as the models write them.
CASES: list[tuple[str, int | None, str | None, str | None, dict, dict, dict]] = [
    # plain: a new key, an equal int as a float text (unchanged), a changed nested value, unset present
    (
        PLAIN,
        3,
        '{"plan": "2026-01-01T00:00:00+00:00"}',
        '{"plan": "set"}',
        {"plan": ('"paid"', TS), "n": ("1.0", TS), "nested": ('{"a": [1, 2.5]}', TS)},
        {},
        {"gone": TS},
    ),
    # nothing changes: equal values (key order, 1e2 vs 100), unset of an absent key
    (
        '{"a": {"x": 1, "y": 2}, "b": 100}',
        3,
        None,
        None,
        {"a": ('{"y": 2, "x": 1}', TS), "b": ("1e2", TS)},
        {},
        {"absent": TS},
    ),
    # true is not 1; set_once over a null-valued key is skipped; set_once of an absent key written
    (PLAIN, 3, None, None, {"flag": ("1", TS)}, {"nul": ('"filled"', TS), "fresh": ('"once"', TS)}, {}),
    # the same absent key set once and set: equal values -> set_once; different -> set
    (
        "{}",
        2,
        None,
        None,
        {"k1": ('"v"', TS), "k2": ('"new"', LATER)},
        {"k1": ('"v"', EARLIER), "k2": ('"old"', EARLIER)},
        {},
    ),
    # NULL version at baseline 0; NULL and non-object metadata maps
    ('{"p": 1}', None, "null", '["x"]', {"p": ("2", TS)}, {}, {}),
    # properties not an object
    ("[1, 2]", 1, None, None, {"q": ('"r"', TS)}, {}, {"p": TS}),
    # conflict filter: a key set and unset (the later wins), set_once and unset tied (unset wins)
    (
        PLAIN,
        3,
        None,
        None,
        {"plan": ('"late"', LATER), "n": ("5", EARLIER)},
        {"gone": ('"x2"', TS)},
        {"plan": TS, "n": TS, "gone": TS},
    ),
    # keys and values COPY and array literals must escape: quotes, backslashes, tabs, newlines, NULL
    (
        '{"NULL": 1, "tab\\tkey": 2, "q\\"k": 3, "back\\\\slash": 4}',
        3,
        None,
        None,
        {"new\\nline": ('"a\\tb\\\\c\\"d"', TS), "ünï": ('"\\u00e9"', TS)},
        {"{brace}": ('"x,y"', TS)},
        {"NULL": TS, "tab\tkey": TS, 'q"k': TS, "back\\slash": TS},
    ),
    # exact numbers: kept as ClickHouse wrote them
    (
        '{"big": 12345678901234567890.5}',
        3,
        None,
        None,
        {
            "precise": ("0.30000000000000000001", TS),
            "exp": ("2.50E+3", TS),
            "big": ("12345678901234567890.5", TS),
        },
        {},
        {},
    ),
    # a number against the exact value of the double nearest to it: distinct (jsonb's rule, both paths)
    (
        '{"f": 0.1, "g": 2.5}',
        3,
        None,
        None,
        {
            "f": ("0.1000000000000000055511151231257827021181583404541015625", TS),
            "g": ("2.50000000000000000", TS),
        },
        {},
        {},
    ),
    # three-way: Postgres moved past the baseline (left to the per-person path in both)
    (
        '{"plan": "team", "legacy": "y"}',
        5,
        None,
        None,
        {"plan": ('"paid"', TS), "other": ("1", TS)},
        {},
        {"legacy": TS},
    ),
]
MISSING = len(CASES)  # one more person in the diff, without a Postgres row


def _seed(env: dict[str, Any], team: int, base: int) -> list[UUID]:
    ch, pg = env["ch"], env["pg"]
    uuids = [new_uuid(base + i) for i in range(len(CASES) + 1)]
    diffs = []
    for i, (props, version, updated_at, operation, set_, set_once, unset) in enumerate(CASES):
        pg.execute(
            "INSERT INTO posthog_person (created_at, properties, properties_last_updated_at, "
            "properties_last_operation, is_identified, uuid, team_id, version) "
            "VALUES ('2025-11-03 10:20:30.123+00', %s::jsonb, %s::jsonb, %s::jsonb, %s, %s, %s, %s)",
            (props, updated_at, operation, i % 2 == 0, uuids[i], team, version),
        )
        baseline = 3 if version == 5 else (version or 0)
        diffs.append(Diff(team, uuids[i], baseline, set=set_, set_once=set_once, unset=unset))
    insert_ch_persons(ch, [(team, uuids[len(CASES) - 1], '{"plan": "free", "legacy": "y"}', 3)])
    diffs.append(Diff(team, uuids[MISSING], 2, set={"a": ("1", TS)}))
    insert_diffs(ch, diffs)
    return uuids


def _rows(env_pg_rows: Any, team: int, uuids: list[UUID]) -> dict[str, list[Any]]:
    index = {u: i for i, u in enumerate(uuids)}

    def norm(value: Any) -> Any:
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        for u, i in index.items():
            text = text.replace(str(u), f"<person {i}>")
        return text.replace(f'"team_id": {team}', '"team_id": <team>')

    persons = env_pg_rows(
        "SELECT uuid, properties::text, properties_last_updated_at::text, properties_last_operation::text, "
        "version FROM posthog_person WHERE team_id = %s",
        (team,),
    )
    backups = env_pg_rows(
        "SELECT uuid, properties::text, properties_last_updated_at::text, properties_last_operation::text, "
        "version, is_identified, created_at, pending_operations::text, properties_after::text, "
        "properties_last_updated_at_after::text, properties_last_operation_after::text, version_after "
        "FROM posthog_person_reconciliation_backup WHERE team_id = %s",
        (team,),
    )
    outbox = env_pg_rows("SELECT person_uuid, version, payload FROM recon_outbox WHERE team_id = %s", (team,))
    return {
        "persons": sorted((index[r[0]], *map(norm, r[1:])) for r in persons),
        "backups": sorted((index[r[0]], *map(norm, r[1:])) for r in backups),
        "outbox": sorted((index[r[0]], r[1], norm(r[2])) for r in outbox),
    }


# 100: the team is one partial batch, decided on the engine's thread; 3: every batch is a whole chunk,
# decided and written on writer threads two at a time (runner.engine.flights).
@pytest.mark.parametrize("batch", [100, 3], ids=["one-batch", "batches-in-flight"])
def test_set_based_write_gives_what_the_per_person_path_gives(
    env, run_apply, pg_rows, kafka_bootstrap, batch
):
    per_person = _seed(env, 1, 0)
    set_based = _seed(env, 2, 100)
    insert_summary(env["ch"], {1: len(per_person), 2: len(set_based)})

    runs = {}
    for team, path in ((1, "per-person"), (2, "set")):
        run = run_apply(
            "--job-id",
            f"job-{path}",
            "--team-id",
            str(team),
            "--write-path",
            path,
            "--batch-size",
            str(batch),
            "--output",
            "json",
        )
        assert run.exit_code == 0, run.stdout + run.stderr
        runs[team] = run

    a, b = _rows(pg_rows, 1, per_person), _rows(pg_rows, 2, set_based)
    assert a["persons"] == b["persons"]
    assert a["backups"] == b["backups"]
    assert a["outbox"] == b["outbox"]
    # Every case did what it is there for: 9 updated (two kinds of nothing-to-change aside), the
    # three-way person updated too, the missing one not found.
    outcomes = {
        team: [runs[team].persons()[str(u)]["outcome"] for u in uuids]
        for team, uuids in ((1, per_person), (2, set_based))
    }
    assert outcomes[1] == outcomes[2]
    assert outcomes[1].count("success") == 10 and outcomes[1].count("no_changes") == 1
    assert outcomes[1][MISSING] == "not_found"
    # The JSON lines agree on what was decided (the properties' key order may differ: a dict from
    # Python's merge, or jsonb's text).
    for i, (u1, u2) in enumerate(zip(per_person, set_based, strict=True)):
        line1, line2 = runs[1].persons()[str(u1)], runs[2].persons()[str(u2)]
        for key in ("outcome", "version_before", "version_after", "properties_before", "properties_after"):
            assert line1[key] == line2[key], (i, key)
    s1, s2 = runs[1].summary(), runs[2].summary()
    # Each run took the path it was given.
    assert s1["stages"]["set_write"]["seconds"] == 0 < s2["stages"]["set_write"]["seconds"]
    for key in ("processed", "updated", "skipped"):
        assert s1[key] == s2[key]
    assert s1["teams"][0]["commits"] == s2["teams"][0]["commits"] == (1 if batch == 100 else 4)
    assert s1["teams"][0]["outcomes"] == s2["teams"][0]["outcomes"]

    # Kafka got the same messages (the set-based write builds them in the same statement).
    messages: dict[int, list[str]] = {1: [], 2: []}
    for m in read_topic(kafka_bootstrap, env["topic"]):
        payload = json.loads(m.value())
        team, uuids = (1, per_person) if payload["team_id"] == 1 else (2, set_based)
        payload.update(id=uuids.index(UUID(payload["id"])), team_id=None)
        messages[team].append(json.dumps(payload, sort_keys=True))
    assert sorted(messages[1]) == sorted(messages[2]) and len(messages[1]) == 10


def _copy_fields(line: str) -> list[Any]:
    """A staged COPY text row's fields, unescaped, JSON fields decoded (the text[] literal kept)."""
    fields = [
        re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m[1], m[1]), f)
        for f in line.split("\t")
    ]
    return [fields[0], fields[1], *(json.loads(f) for f in fields[2:8]), fields[8], json.loads(fields[9])]


def test_clickhouse_builds_the_staged_rows_python_would(env):
    """The staged rows the reader takes from ClickHouse carry what the Python builder writes from the
    decoded entries (the same JSON values and array literal; escaping for COPY included)."""
    uuids = _seed(env, 1, 0)
    diffs_read = list(diffs.iter_team_diffs(env["ch"], SCHEMA, 1, 100))
    assert len(diffs_read) == len(uuids)
    for d in diffs_read:
        assert d.stage_line is not None
        assert _copy_fields(d.stage_line) == _copy_fields(apply_sets.built_stage_line(d, True)), d.person_uuid


def test_plain_diffs_are_those_the_reader_need_not_look_into(env):
    """ClickHouse marks a diff plain (its entries decoded only when asked) only where the conflict filter
    changes nothing and no text needs the unstorable check; the lazily decoded maps are the eager ones."""
    _seed(env, 1, 0)
    diffs_read = list(diffs.iter_team_diffs(env["ch"], SCHEMA, 1, 100))
    plain = [d for d in diffs_read if d.plain]
    assert plain and len(plain) < len(diffs_read)
    for d in diffs_read:
        eager = replace(d, set=dict(d.set), set_once=dict(d.set_once), unset=dict(d.unset), plain=False)
        assert (eager.set, eager.set_once, eager.unset) == (d.set, d.set_once, d.unset)
        if d.plain:
            assert conflict_filter(eager) is eager, d.person_uuid
            assert unstorable(eager) is None and d.invalid is None, d.person_uuid
        if (d.set.keys() | d.set_once.keys()) & d.unset.keys():
            assert not d.plain, d.person_uuid  # the conflict filter has work to do


def test_a_value_that_would_shift_the_entries_fails_its_person_only(env, run_apply):
    """A raw value text that is not one JSON value of its own (`1],[2`) still makes the concatenated
    entries valid JSON, so ClickHouse must not call its diff plain: the reader decodes it at once and
    the person fails alone (invalid_value); the others are applied."""
    good, bad = new_uuid(801), new_uuid(802)
    insert_ch_persons(env["ch"], [(1, u, {"plan": "free"}, 2) for u in (good, bad)])
    for u in (good, bad):
        insert_pg_person(env["pg"], 1, u, {"plan": "free"}, 2)
    insert_diffs(
        env["ch"],
        [Diff(1, good, 2, set={"plan": ('"paid"', TS)}), Diff(1, bad, 2, set={"plan": ("1],[2", TS)})],
    )
    insert_summary(env["ch"], {1: 2})
    read = {d.person_uuid: d for d in diffs.iter_team_diffs(env["ch"], SCHEMA, 1, 100)}
    assert read[good].plain and not read[bad].plain and read[bad].invalid is not None

    run = run_apply("--job-id", "job-shift", "--output", "json")
    lines = {r["person_uuid"]: r for r in map(json.loads, run.stdout.splitlines()) if "person_uuid" in r}
    assert lines[str(good)]["outcome"] == "success" and lines[str(bad)]["outcome"] == "invalid_value"
