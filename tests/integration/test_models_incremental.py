"""An incremental `dbt run` equals a `--full-refresh` build, row for row, after data arrives late.

One scenario per mode (single pass, windowed): a first build, then data ingested after it - an event
late into an already built window, a merge (new override), a withdrawn override, a person caught up by
ingestion, a person deleted, a new team, events exactly at the window edges and at the previous build's
`now` - and a second, incremental build. The same sources are then built from scratch with
`--full-refresh` in another schema. Each case is one test over its own persons; the whole tables are
compared too, and both builds against the oracle (tests/reference_rules.py).

Ingestion times are explicit (the watermark reads `inserted_at`, `_timestamp` of person and override
rows): the first data is ingested on 2026-01-10, the later data on 2026-01-11 12:00, after the first
build - with event timestamps that fall inside windows that build already covered.
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
NOW1, NOW2 = "2026-01-10 00:00:00", "2026-01-12 00:00:00"
FIRST_INGEST = datetime(2026, 1, 10, 0, 0, tzinfo=UTC)
LATER_INGEST = datetime(2026, 1, 11, 12, 0, tzinfo=UTC)
MODES = {"single_pass": 0, "windowed": 3600}


def ts(text: str) -> datetime:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC)


def uid(label: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"recon-incremental/{label}")


def props(**members: object) -> str:
    return json.dumps(members)


class Data:
    """Rows to insert, with the persons of each case recorded."""

    def __init__(self, ingested: datetime):
        self.ingested = ingested
        self.events: list[rr.Event] = []
        self.persons: list[rr.PersonRow] = []
        self.overrides: list[rr.OverrideRow] = []

    def person(
        self, label: str, properties: dict, version: int = 1, team: int = 1, deleted: int = 0
    ) -> uuid.UUID:
        self.persons.append(
            rr.PersonRow(uid(label), team, json.dumps(properties), deleted, version, self.ingested, version)
        )
        return uid(label)

    def event(
        self, label: str, owner: uuid.UUID, when: str, properties: str, distinct: str = "", team: int = 1
    ) -> None:
        self.events.append(rr.Event(uid(label), team, distinct or str(owner), owner, ts(when), properties))

    def override(
        self, distinct: str, person: uuid.UUID, version: int, deleted: int = 0, team: int = 1
    ) -> None:
        self.overrides.append(
            rr.OverrideRow(team, distinct, person, deleted, version, self.ingested, version, 0)
        )

    def write(self, env: mh.ModelsEnv) -> None:
        env.insert_events(self.events, ingested_at=self.ingested)
        env.insert_persons(self.persons)
        env.insert_overrides(self.overrides)


# case -> (team, person labels) whose rows the case's test compares
CASES: dict[str, tuple[int, tuple[str, ...]]] = {
    "late_event": (1, ("late", "late-only")),
    "merge_after_build": (1, ("merge-a", "merge-b")),
    "override_deleted": (1, ("unmerge-c", "unmerge-d")),
    "person_caught_up": (1, ("caught-up",)),
    "person_deleted": (1, ("deleted",)),
    "new_team": (9, ("new-team",)),
    "window_edges": (1, ("edges",)),
    "changed_key_beside_an_unchanged_one": (1, ("two-keys",)),
    "new_event_without_operations": (1, ("no-ops",)),
}


def steady_data() -> Data:
    """Persons ingested a day before the rest (outside the overlap): one nothing happens to later, one
    that later gets an event without property operations."""
    d = Data(FIRST_INGEST - timedelta(days=1))
    steady = d.person("steady", {"plan": "free"})
    d.event("steady-1", steady, "2026-01-07 01:00:00", props(**{"$set": {"plan": "pro"}}))
    # a diff; the later data brings only an event without property operations
    q = d.person("no-ops", {"plan": "free"})
    d.event("no-ops-1", q, "2026-01-07 09:00:00", props(**{"$set": {"plan": "pro"}}))
    return d


def first_data() -> Data:
    d = Data(FIRST_INGEST)

    late = d.person("late", {"email": "old@example.com"})
    d.event("late-1", late, "2026-01-07 10:00:00", props(**{"$set": {"email": "a@example.com"}}))
    d.person("late-only", {"email": "old@example.com"})

    a = d.person("merge-a", {"plan": "free"})
    b = d.person("merge-b", {"plan": "free"})
    d.event("merge-1", b, "2026-01-07 01:00:00", props(**{"$set": {"plan": "pro"}}), distinct="b-dev")
    d.event("merge-2", a, "2026-01-07 02:00:00", props(**{"$set_once": {"src": "ads"}}), distinct="a-dev")

    c = d.person("unmerge-c", {"plan": "free"})
    dd = d.person("unmerge-d", {"plan": "team"})
    d.override("c-dev", dd, 1)
    d.event("unmerge-1", c, "2026-01-07 03:00:00", props(**{"$set": {"plan": "scale"}}), distinct="c-dev")

    e = d.person("caught-up", {"plan": "free"})
    d.event("caught-up-1", e, "2026-01-07 04:00:00", props(**{"$set": {"plan": "pro"}, "$unset": ["x"]}))

    f = d.person("deleted", {"plan": "free"})
    d.event("deleted-1", f, "2026-01-07 05:00:00", props(**{"$set": {"plan": "pro"}}))

    g = d.person("edges", {"a": 0, "b": 0, "c": 0, "d": 0, "e": 0, "f": 0, "g": 0})
    d.event("edge-w0", g, W0, props(**{"$set": {"a": 1}}))
    d.event("edge-before-w1", g, "2026-01-07 14:51:59.999999", props(**{"$set": {"b": 1}}))
    d.event("edge-w1", g, W1, props(**{"$set": {"c": 1}}))
    d.event("edge-window", g, "2026-01-06 21:01:00", props(**{"$set": {"d": 1}}))
    # exactly at the first build's now: excluded then, included by the second build
    d.event("edge-now1", g, NOW1, props(**{"$unset": ["e"]}))
    d.event("edge-before-now1", g, "2026-01-09 23:59:59.999999", props(**{"$set": {"f": 1}}))
    # exactly at the second build's now: never included
    d.event("edge-now2", g, NOW2, props(**{"$set": {"g": 1}}))

    # two keys with a diff; the later data changes one of them only
    k = d.person("two-keys", {"a": 0, "b": 0})
    d.event("two-keys-1", k, "2026-01-07 08:00:00", props(**{"$set": {"a": 1, "b": 1}}))
    # a team whose property events all come after W1 at first: discovered once a late event arrives
    h = d.person("late-team", {"plan": "free"}, team=8)
    d.event("late-team-1", h, "2026-01-08 00:00:00", props(**{"$set": {"plan": "pro"}}), team=8)
    return d


def later_data() -> Data:
    d = Data(LATER_INGEST)
    # an event ingested after the first build, with a timestamp inside the bug window (issue 12)
    d.event("late-2", uid("late"), "2026-01-07 14:00:00", props(**{"$set": {"email": "late@example.com"}}))
    d.event(
        "late-only-1", uid("late-only"), "2026-01-07 14:00:00", props(**{"$set": {"email": "b@example.com"}})
    )
    # b-dev is merged into person a: its operations now belong to a
    d.override("b-dev", uid("merge-a"), 1)
    # the override of c-dev is withdrawn: its events fall back to their own person c
    d.override("c-dev", uid("unmerge-d"), 2, deleted=1)
    # ingestion caught up: the person now holds the value and lost the key
    d.persons.append(rr.PersonRow(uid("caught-up"), 1, json.dumps({"plan": "pro"}), 0, 2, LATER_INGEST, 2))
    # deleted in ClickHouse (PostHog deletes with version + 100)
    d.persons.append(rr.PersonRow(uid("deleted"), 1, "{}", 1, 101, LATER_INGEST, 101))
    # a new team
    n = d.person("new-team", {"plan": "free"}, team=9)
    d.event("new-team-1", n, "2026-01-07 06:00:00", props(**{"$set": {"plan": "pro"}}), team=9)
    d.event("late-team-2", uid("late-team"), "2026-01-07 07:00:00", props(**{"$unset": ["plan"]}), team=8)
    d.event("two-keys-2", uid("two-keys"), "2026-01-07 13:00:00", props(**{"$set": {"a": 2}}))
    d.event("no-ops-2", uid("no-ops"), "2026-01-07 13:00:00", props(**{"$current_url": "/pricing"}))
    return d


def without_run_columns(rows: list[tuple]) -> dict:
    """Diff rows by (team, person), every column but the dbt invocation id."""
    return {(r[0], r[2]): r[:16] for r in rows}


def summary_without_run_columns(rows: list[tuple]) -> dict:
    return {r[0]: r[:11] for r in rows}


@pytest.fixture(scope="module", params=list(MODES), ids=list(MODES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    mode = request.param
    target = tmp_path_factory.mktemp("dbt-incr")  # shared: dbt reuses the parsed project
    incremental = mh.ModelsEnv("posthog_incr_it", "recon_incr_it", target)
    full = mh.ModelsEnv("posthog_incr_it", "recon_incr_full_it", target)
    incremental.init_sources()
    incremental.drop_models()
    full.drop_models()
    base = {
        "bug_window_start": W0,
        "bug_window_end": W1,
        "window_seconds": MODES[mode],
        "person_batch_size": 3,
    }

    steady_data().write(incremental)
    first_data().write(incremental)
    incremental.run({**base, "now": NOW1})
    first_rows = without_run_columns(incremental.diff_rows())
    later_data().write(incremental)
    incremental.run({**base, "now": NOW2})
    full.run({**base, "now": NOW2}, extra=["--full-refresh"])
    return {
        "mode": mode,
        "incremental": incremental,
        "full": full,
        "first": first_rows,
        "vars": {**base, "now": NOW2},
        "incremental_rows": without_run_columns(incremental.diff_rows()),
        "full_rows": without_run_columns(full.diff_rows()),
    }


def rows_of(rows: dict, team: int, labels: tuple[str, ...]) -> dict:
    persons = {uid(label) for label in labels}
    return {slot: row for slot, row in rows.items() if slot[0] == team and slot[1] in persons}


@pytest.mark.parametrize("case", list(CASES))
def test_incremental_build_equals_a_full_refresh(built: dict, case: str) -> None:
    team, labels = CASES[case]
    got = rows_of(built["incremental_rows"], team, labels)
    expected = rows_of(built["full_rows"], team, labels)
    assert got == expected, mh.explain_mismatch(got, expected)
    assert expected or case in ("person_caught_up", "person_deleted"), f"{case}: the case should leave a diff"


def test_the_cases_change_what_the_first_build_found(built: dict) -> None:
    """The later data matters: without it the diff of these persons would be other than it is."""
    first, final = built["first"], built["full_rows"]
    assert (1, uid("late-only")) in final and (1, uid("late-only")) not in first
    assert final[(1, uid("late"))][5] == ('"late@example.com"',)
    assert (1, uid("merge-b")) in first and (1, uid("merge-b")) not in final
    assert final[(1, uid("merge-a"))][4] == ("plan",)
    assert (1, uid("unmerge-d")) in first and (1, uid("unmerge-c")) in final
    assert (1, uid("caught-up")) in first and (1, uid("caught-up")) not in final
    assert (1, uid("deleted")) in first and (1, uid("deleted")) not in final
    assert (9, uid("new-team")) in final and (8, uid("late-team")) in final
    edges = final[(1, uid("edges"))]
    assert "g" not in edges[4] and "e" in edges[10]
    # the changed key has its new value, the other key of the same person keeps its entry
    assert first[(1, uid("two-keys"))][4:6] == (("a", "b"), ("1", "1"))
    assert final[(1, uid("two-keys"))][4:6] == (("a", "b"), ("2", "1"))
    assert final[(1, uid("no-ops"))][2:12] == first[(1, uid("no-ops"))][2:12]


def test_whole_tables_equal_and_match_the_rules(built: dict) -> None:
    got, expected = built["incremental_rows"], built["full_rows"]
    assert got == expected, mh.explain_mismatch(got, expected)
    summary = summary_without_run_columns(built["incremental"].summary_rows())
    full_summary = summary_without_run_columns(built["full"].summary_rows())
    assert summary == full_summary, mh.explain_mismatch(summary, full_summary)
    result = built["full"].oracle(mh.config_from_vars(built["vars"]))
    content, oracle = mh.diff_content(built["full"].diff_rows()), mh.oracle_content(result)
    assert content == oracle, mh.explain_mismatch(content, oracle)
    assert mh.summary_content(built["full"].summary_rows()) == mh.oracle_summary(result)


def test_steady_persons_are_not_recomputed(built: dict) -> None:
    """Re-diff only what changed: a person without new operations, person rows or overrides keeps the
    row the first build computed (same invocation id in the per-person table)."""
    env = built["incremental"]
    invocations = dict(
        env.query(
            f"SELECT person_id, argMax(invocation_id, computed_version) FROM {env.target_schema}."
            "int_person_property_diff__persons GROUP BY person_id"
        )
    )
    latest = env.diff_rows()[0][16]
    assert invocations[uid("steady")] != latest
    # an event without property operations changes nothing the diff reads: not recomputed either
    assert invocations[uid("no-ops")] != latest
    assert invocations[uid("late")] == latest and invocations[uid("merge-a")] == latest
