"""The `semantics` var on the real engine: carried into the summary (and, for tables built before the
column existed, read as `original`)."""

from __future__ import annotations

import itertools
import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import models_harness as mh
import pytest
import reference_rules as rr
import test_models_incremental as tmi

pytestmark = pytest.mark.integration

W0, W1 = "2026-01-06 20:01:00", "2026-01-07 14:52:00"
NOW = "2026-01-20 00:00:00"
BASE = {"bug_window_start": W0, "bug_window_end": W1, "now": NOW}


def ts(text: str) -> datetime:
    return datetime.strptime(text, rr.TIME_FORMAT).replace(tzinfo=UTC)


def uid(label: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"recon-replay-test/{label}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> mh.ModelsEnv:
    models_env = mh.ModelsEnv(
        source_database="posthog_models_replay",
        target_schema="recon_models_replay",
        target_path=tmp_path_factory.mktemp("dbt-target"),
    )
    models_env.drop_models()
    models_env.init_sources()
    return models_env


def two_teams(env: mh.ModelsEnv) -> None:
    env.init_sources()
    persons, events = [], []
    for team in (1, 2):
        person = uid(f"p{team}")
        persons.append(rr.PersonRow(person, team, json.dumps({"plan": "free"}), 0, 1, ts(W0), 0))
        events.append(
            rr.Event(
                uid(f"e{team}"),
                team,
                f"d{team}",
                person,
                ts("2026-01-07 00:00:00"),
                json.dumps({"$set": {"plan": "paid"}}),
            )
        )
    env.insert_persons(persons)
    env.insert_events(events)


def semantics_by_team(env: mh.ModelsEnv) -> dict[int, str]:
    rows = env.query(f"SELECT team_id, semantics FROM {env.target_schema}.person_property_diff_summary")
    return dict(rows)


def test_summary_semantics_and_rows_kept_from_a_table_without_the_column(env: mh.ModelsEnv) -> None:
    two_teams(env)
    env.drop_models()
    env.run(BASE)
    assert semantics_by_team(env) == {1: "original", 2: "original"}
    # a summary built before the column existed: a build of team 1 keeps team 2 as `original`
    env.client.command(f"ALTER TABLE {env.target_schema}.person_property_diff_summary DROP COLUMN semantics")
    env.run({**BASE, "team_ids": [1]})
    assert semantics_by_team(env) == {1: "original", 2: "original"}


# --- the replay rules: the models against the oracle, row for row -----------------------------------

ORDERINGS = ["".join(p) for n in (1, 2, 3) for p in itertools.permutations("SOU", n)]
KIND = {"S": "$set", "O": "$set_once", "U": "$unset"}


def payload(letter: str, value: str) -> dict:
    return {"$unset": ["k"]} if letter == "U" else {KIND[letter]: {"k": value}}


def replay_cases() -> tuple[list[rr.Event], list[rr.PersonRow]]:
    """Every ordering of SET / SET_ONCE / UNSET on a key, with the key absent and present before,
    in one window, across windows and beyond W1; ties; and random longer histories (fixed seed)."""
    events: list[rr.Event] = []
    persons: list[rr.PersonRow] = []
    spacings = {
        "same_window": ["2026-01-07 01:05:00", "2026-01-07 01:20:00", "2026-01-07 01:40:00"],
        "windows": ["2026-01-06 21:30:00", "2026-01-07 03:00:00", "2026-01-07 09:00:00"],
        "past_w1": ["2026-01-07 10:00:00", "2026-01-07 16:00:00", "2026-01-08 12:00:00"],
    }

    def person(label: str, state: dict) -> uuid.UUID:
        pid = uid(label)
        persons.append(rr.PersonRow(pid, 1, json.dumps(state), 0, 3, ts(W0), len(persons)))
        return pid

    def event(label: str, pid: uuid.UUID, at: str, body: dict) -> None:
        events.append(rr.Event(uid(label), 1, f"d-{pid}", pid, ts(at), json.dumps(body)))

    for letters in ORDERINGS:
        for before in ({}, {"k": "p"}):
            for spacing, times in spacings.items():
                label = f"{letters}-{'present' if before else 'absent'}-{spacing}"
                pid = person(label, before)
                for i, letter in enumerate(letters):
                    event(f"{label}-{i}", pid, times[i], payload(letter, letter.lower()))

    # ties: equal timestamps across events and inside one event
    at = "2026-01-07 02:00:00"
    for before in ({}, {"k": "p"}):
        tag = "present" if before else "absent"
        pid = person(f"tie-set-unset-{tag}", before)
        event(f"tie-su-1-{tag}", pid, at, {"$set": {"k": "s"}})
        event(f"tie-su-2-{tag}", pid, at, {"$unset": ["k"]})
        pid = person(f"tie-once-unset-{tag}", before)
        event(f"tie-ou-1-{tag}", pid, at, {"$unset": ["k"]})
        event(f"tie-ou-2-{tag}", pid, at, {"$set_once": {"k": "o"}})
        pid = person(f"tie-one-event-{tag}", before)
        event(f"tie-one-{tag}", pid, at, {"$set_once": {"k": "o"}, "$set": {"k": "s"}, "$unset": ["k"]})
        pid = person(f"tie-unset-then-onces-{tag}", before)
        event(f"tie-uo-0-{tag}", pid, "2026-01-07 01:00:00", {"$unset": ["k"]})
        for n in range(3):
            event(f"tie-uo-{n + 1}-{tag}", pid, at, {"$set_once": {"k": f"o{n}"}})
        pid = person(f"tie-unset-once-then-once-{tag}", before)  # the tied SET_ONCE comes before the UNSET
        event(f"tie-uoo-1-{tag}", pid, at, {"$set_once": {"k": "o0"}, "$unset": ["k"]})
        event(f"tie-uoo-2-{tag}", pid, "2026-01-07 02:10:00", {"$set_once": {"k": "o1"}})
        pid = person(f"tie-sets-{tag}", before)
        for n in range(3):
            event(f"tie-ss-{n}-{tag}", pid, at, {"$set": {"k": f"s{n}"}})

    # random longer histories on two keys, spread over windows, with repeated timestamps
    rng = random.Random(20260107)
    stamps = [ts(W0) + timedelta(minutes=37 * i) for i in range(60)]
    for n in range(150):
        pid = person(f"random-{n}", {k: rng.choice(["a", "b", 1]) for k in ("k", "j") if rng.random() < 0.5})
        for m in range(rng.randrange(1, 9)):
            letter = rng.choice("SOU")
            key = rng.choice(("k", "j"))
            body = (
                {"$unset": [key]} if letter == "U" else {KIND[letter]: {key: rng.choice(["a", "b", 1, 1.0])}}
            )
            at_time = rng.choice(stamps).strftime(rr.TIME_FORMAT)
            event(f"random-{n}-{m}", pid, at_time, body)
    return events, persons


@pytest.mark.parametrize("window_seconds", [0, 3600])
def test_replay_matches_the_oracle_on_every_ordering(env: mh.ModelsEnv, window_seconds: int) -> None:
    env.init_sources()
    events, persons = replay_cases()
    env.insert_events(events)
    env.insert_persons(persons)
    env.drop_models()
    dbt_vars = {**BASE, "semantics": "replay", "window_seconds": window_seconds}
    env.run(dbt_vars)
    result = env.oracle(mh.config_from_vars(dbt_vars))
    got, expected = mh.diff_content(env.diff_rows()), mh.oracle_content(result)
    assert got == expected, mh.explain_mismatch(got, expected)
    assert len(expected) > 100
    summary = mh.summary_content(env.summary_rows())
    assert summary == mh.oracle_summary(result), mh.explain_mismatch(summary, mh.oracle_summary(result))
    assert set(semantics_by_team(env).values()) == {"replay"}
    modes = env.query(f"SELECT DISTINCT semantics FROM {env.target_schema}.person_property_diff")
    assert modes == [("replay",)]


# --- seeded data: both modes, incremental builds, and the fixed point on the real engine ------------


def apply_diff(state_text: str, row: rr.DiffRow) -> str:
    """What `runner apply` writes (simple merge) for one diff row, as the new ClickHouse properties."""
    props = json.loads(state_text or "{}")
    for key, value, _ in row.set_once_entries:
        props.setdefault(key, json.loads(value))
    for key, value, _ in row.set_entries:
        props[key] = json.loads(value)
    for key, _ in row.unset_entries:
        props.pop(key, None)
    return json.dumps(props)


@pytest.mark.parametrize("window_seconds", [0, 1800])
def test_replay_seeded_incremental_builds_match_the_oracle_and_repairs_are_a_fixed_point(
    env: mh.ModelsEnv, window_seconds: int
) -> None:
    from runner.local import seed

    config = seed.SeedConfig(teams=3, persons=1500, events=30_000, seed=14)
    env.init_sources()
    seed.write_clickhouse(seed.generate(config), env.client, env.source_database)
    env.drop_models()
    end = (seed.parse_time(config.start, "start") + timedelta(days=config.days)).strftime(rr.TIME_FORMAT)
    base = {
        "bug_window_start": config.bug_window_start,
        "bug_window_end": config.bug_window_end,
        "window_seconds": window_seconds,
        "person_batch_size": 97,
        "semantics": "replay",
    }
    # built up to W1, then incrementally (slicing a window in two, building one `now` twice) to the end
    # of the data: each build equals the oracle from scratch
    middle = (ts(config.bug_window_end) + timedelta(hours=30, minutes=17)).strftime(rr.TIME_FORMAT)
    for now in (config.bug_window_end, middle, middle, end):
        env.run({**base, "now": now})
        result = env.oracle(mh.config_from_vars({**base, "now": now}))
        got, expected = mh.diff_content(env.diff_rows()), mh.oracle_content(result)
        assert got == expected, mh.explain_mismatch(got, expected)
    assert len(result.diffs) > 50

    # apply the diff as the runner would, ingest it (a new version in `person`, ingested now), build again
    _, person_rows, _ = env.read_sources()
    latest: dict = {}
    for p in person_rows:
        if (p.team_id, p.id) not in latest or p.version > latest[(p.team_id, p.id)].version:
            latest[(p.team_id, p.id)] = p
    ingested = datetime.now(UTC)
    repaired = [
        rr.PersonRow(
            p.id, p.team_id, apply_diff(p.properties, result.diffs[slot]), 0, p.version + 1, ingested, 0
        )
        for slot, p in latest.items()
        if slot in result.diffs
    ]
    env.insert_persons(repaired)
    env.run({**base, "now": end})
    after = env.oracle(mh.config_from_vars({**base, "now": end}))
    got, expected = mh.diff_content(env.diff_rows()), mh.oracle_content(after)
    assert got == expected, mh.explain_mismatch(got, expected)
    assert not set(got) & set(result.diffs), "a repaired person is listed again"

    # the original rules on the same repaired data still list some of them (rule artifacts)
    env.run({**base, "now": end, "semantics": "original"})
    assert {(r[0], r[2]) for r in env.diff_rows()} & set(result.diffs)


def test_replay_dbt_unit_tests_pass(env: mh.ModelsEnv) -> None:
    """The yml unit tests of the replay rules (generated from the oracle) on the built models."""
    two_teams(env)
    env.drop_models()
    dbt_vars = {**BASE, "semantics": "replay"}
    env.run(dbt_vars)
    names = [
        "diff_replay_every_ordering_absent_and_present",
        "diff_replay_equal_timestamps",
        "ops_by_window_last_set_once_for_every_ordering",
    ]
    results = env.dbt("test", dbt_vars, ["--select", *(f"unit_test:{name}" for name in names)])
    outcomes = {
        r.node.name: str(r.status) for r in results.results if r.node.unique_id.startswith("unit_test.")
    }
    assert outcomes == dict.fromkeys(names, "pass"), [r.message for r in results.results]


# --- incremental replay equals a full refresh (the scenario of test_models_incremental.py) ----------


def replay_interleaved(first: bool) -> tmi.Data:
    """Keys unset by one distinct_id and filled by SET_ONCEs of another in the same window, part of
    them ingested late: the first SET_ONCE after the latest UNSET comes from overlapping rows."""
    d = tmi.Data(tmi.FIRST_INGEST if first else tmi.LATER_INGEST)
    if first:
        p = d.person("replay-interleaved", {"k": "p", "j": "p"})
        d.event(
            "ri-1", p, "2026-01-07 01:05:00", props(**{"$set_once": {"k": "o1", "j": "o1"}}), distinct="dev-a"
        )
        d.event("ri-2", p, "2026-01-07 01:10:00", props(**{"$unset": ["k", "j"]}), distinct="dev-b")
        d.event("ri-3", p, "2026-01-07 01:40:00", props(**{"$set_once": {"k": "o3"}}), distinct="dev-a")
        d.override("dev-b", p, 1)
    else:
        p = tmi.uid("replay-interleaved")
        # late: a SET_ONCE between the UNSET and o3, and a later UNSET of j with a SET_ONCE after it
        d.event("ri-4", p, "2026-01-07 01:20:00", props(**{"$set_once": {"k": "o2"}}), distinct="dev-a")
        d.event("ri-5", p, "2026-01-07 01:30:00", props(**{"$unset": ["j"]}), distinct="dev-b")
        d.event("ri-6", p, "2026-01-07 01:50:00", props(**{"$set_once": {"j": "o6"}}), distinct="dev-a")
    return d


def props(**members: object) -> str:
    return json.dumps(members)


@pytest.mark.parametrize("window_seconds", [0, 3600])
def test_replay_incremental_build_equals_a_full_refresh(
    tmp_path_factory: pytest.TempPathFactory, window_seconds: int
) -> None:
    incremental = mh.ModelsEnv("posthog_replay_incr", "recon_replay_incr", tmp_path_factory.mktemp("dbt-ri"))
    full = mh.ModelsEnv("posthog_replay_incr", "recon_replay_full", tmp_path_factory.mktemp("dbt-rf"))
    incremental.init_sources()
    incremental.drop_models()
    full.drop_models()
    base = {
        "bug_window_start": W0,
        "bug_window_end": W1,
        "window_seconds": window_seconds,
        "person_batch_size": 3,
        "semantics": "replay",
    }
    for data in (tmi.steady_data(), tmi.first_data(), replay_interleaved(True)):
        data.write(incremental)
    incremental.run({**base, "now": tmi.NOW1})
    for data in (tmi.later_data(), replay_interleaved(False)):
        data.write(incremental)
    incremental.run({**base, "now": tmi.NOW2})
    full.run({**base, "now": tmi.NOW2}, extra=["--full-refresh"])

    got, expected = (
        tmi.without_run_columns(incremental.diff_rows()),
        tmi.without_run_columns(full.diff_rows()),
    )
    assert got == expected, mh.explain_mismatch(got, expected)
    result = full.oracle(mh.config_from_vars({**base, "now": tmi.NOW2}))
    content, oracle = mh.diff_content(full.diff_rows()), mh.oracle_content(result)
    assert content == oracle, mh.explain_mismatch(content, oracle)
    row = content[(1, tmi.uid("replay-interleaved"))]
    # k: the first SET_ONCE after the UNSET at 01:10 is the late o2; j: o6 after the late UNSET
    assert dict(zip(row[2], row[3], strict=True)) == {"j": '"o6"', "k": '"o2"'}
