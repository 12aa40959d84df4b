"""Demo data generator: operation semantics, determinism and the shape of the data (no I/O)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from functools import lru_cache

import pytest
from click.testing import CliRunner

from runner.config.settings import ConfigError
from runner.local.seed.config import SeedConfig
from runner.local.seed.generator import EVENT_COLUMNS, OVERRIDE_COLUMNS, PERSON_COLUMNS, Dataset, generate
from runner.local.seed.run import SeedResult, refuse_remote
from runner.local.seed.semantics import (
    BLOCKLIST,
    SET,
    SET_ONCE,
    UNSET,
    apply_operations,
    operations_from_properties,
)

SMALL = SeedConfig(teams=4, persons=1500, events=15000, seed=7)


@lru_cache(maxsize=4)
def _dataset(config: SeedConfig) -> Dataset:
    return generate(config)


def _unescape(field: str) -> str | None:
    if field == "\\N":
        return None
    out, i = [], 0
    while i < len(field):
        ch = field[i]
        if ch == "\\":
            nxt = field[i + 1]
            out.append({"\\": "\\", "t": "\t", "n": "\n"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _rows(blocks: list[bytes], columns: tuple[str, ...]) -> list[dict]:
    rows = []
    for line in b"".join(blocks).decode().splitlines():
        fields = line.split("\t")
        assert len(fields) == len(columns), line
        rows.append({c: _unescape(f) for c, f in zip(columns, fields, strict=True)})
    return rows


# --- operation semantics ---------------------------------------------------------------------------


def test_operations_follow_spec_r54() -> None:
    props = json.dumps(
        {
            "$set": {"a": 1, "b": None, "$browser": "Chrome", "c": {"x": [1]}, "e": ""},
            "$set_once": {"f": False, "$os": "Linux"},
            "$unset": ["g", "$current_url", 7],
            "other": "ignored",
        }
    )
    assert operations_from_properties(props) == [
        (SET, "a", 1),
        (SET, "c", {"x": [1]}),
        (SET, "e", ""),
        (SET_ONCE, "f", False),
        (UNSET, "g", None),
        (UNSET, "7", None),
    ]


@pytest.mark.parametrize(
    "props",
    [
        '{"$set": {"a": 1}',  # truncated
        "{'$set': {'a': 1}}",
        '{"$set": {"a": 1},}',
        "properties unavailable",
        "",
        '{"$set": "a=1", "$set_once": [1], "$unset": {"a": ""}}',
        '{"$set": null, "$set_once": 5, "$unset": "a"}',
        "[1, 2]",
    ],
)
def test_malformed_and_non_object_forms_produce_nothing(props: str) -> None:
    assert operations_from_properties(props) == []


def test_apply_operations_replay_rules() -> None:
    state: dict = {}
    assert apply_operations(state, [(SET, "a", 1), (SET_ONCE, "b", "first")])
    assert not apply_operations(state, [(SET_ONCE, "a", 2), (SET, "a", 1)])
    assert apply_operations(state, [(SET, "a", True)])  # True is not 1
    assert apply_operations(state, [(UNSET, "b", None)])
    assert not apply_operations(state, [(UNSET, "missing", None)])
    assert apply_operations(state, [(SET_ONCE, "b", "second")])
    assert state == {"a": True, "b": "second"}


def test_blocklist_is_the_spec_list() -> None:
    assert len(BLOCKLIST) == 31
    assert "$geoip_country_name" not in BLOCKLIST and "$geoip_city_name" not in BLOCKLIST


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"persons": 2}, "--persons"),
        ({"bug_window_start": "2026-01-08 00:00:00", "bug_window_end": "2026-01-07 00:00:00"}, "before"),
        ({"bug_window_start": "2026/01/06"}, "YYYY-MM-DD"),
        ({"start": "2099-01-01 00:00:00"}, "future"),
        ({"bug_window_start": "2025-01-01 00:00:00", "bug_window_end": "2025-01-02 00:00:00"}, "outside"),
        ({"lost_fraction": 1.5}, "--lost-fraction"),
    ],
)
def test_invalid_configuration_is_rejected(changes: dict, message: str) -> None:
    config = SeedConfig(**{**SMALL.__dict__, "teams": 3, **changes})
    with pytest.raises(ConfigError, match=message):
        config.validate()


def test_cli_rejects_bad_window_with_exit_2() -> None:
    from runner.cli import main

    result = CliRunner().invoke(
        main,
        [
            "demo",
            "seed",
            "--bug-window-start",
            "2026-01-08 00:00:00",
            "--bug-window-end",
            "2026-01-07 00:00:00",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "must be before" in result.output


def test_tiny_configurations() -> None:
    assert generate(SeedConfig(teams=1, persons=1, events=0, seed=1)).counts["events"] == 0
    data = generate(SeedConfig(teams=2, persons=10, events=3, seed=1))
    assert data.counts["events"] == 3 and data.counts["persons"] == 10


# --- determinism -----------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs() -> None:
    config = SeedConfig(teams=3, persons=300, events=3000, seed=5)
    a, b = generate(config), generate(config)
    c = generate(SeedConfig(teams=3, persons=300, events=3000, seed=6))
    assert a.events_tsv == b.events_tsv and a.persons_tsv == b.persons_tsv
    assert a.overrides_tsv == b.overrides_tsv and a.pg_rows == b.pg_rows and a.counts == b.counts
    assert a.events_tsv != c.events_tsv and a.persons_tsv != c.persons_tsv


# --- shape -----------------------------------------------------------------------------------------


def test_counts_and_time_range() -> None:
    data = _dataset(SMALL)
    events = _rows(data.events_tsv, EVENT_COLUMNS)
    assert len(events) == SMALL.events == data.counts["events"]
    assert data.team_ids == [1, 2, 3, 4] and data.quiet_team_id == 4
    assert {int(e["team_id"]) for e in events} == {1, 2, 3, 4}
    now = int(datetime.now(UTC).timestamp() * 1_000_000)
    stamps = [int(e["timestamp"]) for e in events]
    assert SMALL.start_us <= min(stamps) and max(stamps) < SMALL.end_us + 1000 < now
    assert len({e["uuid"] for e in events}) == len(events)
    share = data.counts["operation_events"] / len(events)
    assert 0.2 < share < 0.35, share
    for key in (
        "malformed_events",
        "null_values",
        "blocklisted_operations",
        "non_object_operations",
        "unset_objects",
    ):
        assert data.counts[key] > 0, key
    assert data.counts["lost_events"] > 0


def test_quiet_team_has_no_property_keys_in_the_window() -> None:
    data = _dataset(SMALL)
    w0, w1 = SMALL.window_us
    for e in _rows(data.events_tsv, EVENT_COLUMNS):
        if e["team_id"] == "4" and w0 <= int(e["timestamp"]) < w1:
            assert not any(f'"{k}"' in e["properties"] for k in ("$set", "$set_once", "$unset")), e


def test_overrides_have_merges_chains_and_deletions() -> None:
    data = _dataset(SMALL)
    overrides = _rows(data.overrides_tsv, OVERRIDE_COLUMNS)
    latest: dict[tuple[str, str], dict] = {}
    for row in overrides:
        key = (row["team_id"], row["distinct_id"])
        assert int(row["version"]) > 0
        if key not in latest or int(row["version"]) > int(latest[key]["version"]):
            latest[key] = row
    assert any(r["is_deleted"] == "1" for r in latest.values())
    assert any(r["is_deleted"] == "0" and r["version"] == "2" for r in latest.values())
    assert len(overrides) > len(latest)


def _resolve_and_replay(data: Dataset) -> tuple[dict[str, dict], dict[str, bool]]:
    """Replay every event (no loss) per resolved person (spec R2.4/R5.3), independently of the generator."""
    live: dict[tuple[str, str], tuple[int, str, str]] = {}
    for row in _rows(data.overrides_tsv, OVERRIDE_COLUMNS):
        key = (row["team_id"], row["distinct_id"])
        version = int(row["version"])
        if key not in live or version > live[key][0]:
            live[key] = (version, row["person_id"], row["is_deleted"])
    w0, w1 = data.config.window_us
    per_person: dict[str, list[tuple[int, list]]] = defaultdict(list)
    window_ops: dict[str, bool] = defaultdict(bool)
    for e in _rows(data.events_tsv, EVENT_COLUMNS):
        override = live.get((e["team_id"], e["distinct_id"]))
        person = override[1] if override and override[2] == "0" else e["person_id"]
        ops = operations_from_properties(e["properties"])
        ts = int(e["timestamp"])
        if ops:
            per_person[person].append((ts, ops))
            window_ops[person] |= w0 <= ts < w1
    replayed = {}
    for person, items in per_person.items():
        items.sort(key=lambda item: item[0])
        assert len({ts for ts, _ in items}) == len(items), "timestamps of one person must be distinct"
        state: dict = {}
        for _, ops in items:
            apply_operations(state, ops)
        replayed[person] = state
    return replayed, window_ops


def _current_clickhouse_persons(data: Dataset) -> dict[str, dict]:
    current: dict[str, dict] = {}
    for row in _rows(data.persons_tsv, PERSON_COLUMNS):
        if row["id"] not in current or int(row["version"]) > int(current[row["id"]]["version"]):
            current[row["id"]] = row
    return {uuid: row for uuid, row in current.items() if row["is_deleted"] == "0"}


def test_stored_state_is_the_replay_minus_lost_updates() -> None:
    data = _dataset(SMALL)
    replayed, window_ops = _resolve_and_replay(data)
    persons = _current_clickhouse_persons(data)
    differing = [
        uuid for uuid, row in persons.items() if json.loads(row["properties"]) != replayed.get(uuid, {})
    ]
    assert differing, "some persons must have lost updates"
    assert all(window_ops[uuid] for uuid in differing), "only persons with operations in the window differ"
    unaffected = [uuid for uuid in persons if not window_ops[uuid]]
    assert len(unaffected) > len(differing)


def test_merged_persons_are_tombstoned_and_history_rows_exist() -> None:
    data = _dataset(SMALL)
    rows = _rows(data.persons_tsv, PERSON_COLUMNS)
    by_id: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_id[row["id"]].append(row)
    tombstoned = [r for r in rows if r["is_deleted"] == "1"]
    assert len(tombstoned) >= data.counts["merged_persons"] > 0
    assert data.counts["history_rows"] > 0
    assert sum(1 for versions in by_id.values() if len(versions) > 1) >= data.counts["history_rows"]
    # merged-away persons are gone from Postgres; only a few deleted persons linger there (gotcha 11)
    pg_uuids = {row[1] for row in data.pg_rows}
    lingering = pg_uuids & {r["id"] for r in tombstoned}
    assert 0 < len(lingering) <= data.counts["deleted_persons"]
    # live overrides point at persons ClickHouse knows
    targets = {r["person_id"] for r in _rows(data.overrides_tsv, OVERRIDE_COLUMNS) if r["is_deleted"] == "0"}
    assert targets <= set(by_id)


def test_postgres_rows_match_clickhouse_current_state() -> None:
    data = _dataset(SMALL)
    current = _current_clickhouse_persons(data)
    null_versions = 0
    for (
        _pk,
        uuid,
        team_id,
        properties,
        updated_at,
        operation,
        version,
        identified,
        created_at,
    ) in data.pg_rows:
        if uuid not in current:
            continue  # deleted in ClickHouse but still in Postgres (spec gotcha 11)
        row = current[uuid]
        assert row["team_id"] == str(team_id)
        assert json.loads(properties) == json.loads(row["properties"])
        assert row["is_identified"] == str(int(identified))
        assert int(row["created_at"]) == int(created_at.timestamp() * 1000)
        if version is None:
            null_versions += 1
        else:
            assert version == int(row["version"])
        if operation is not None:
            assert set(json.loads(operation)) == set(json.loads(updated_at))
            assert set(json.loads(operation).values()) <= {"set", "set_once"}
    assert null_versions == data.counts["null_version_in_postgres"] > 0
    assert data.counts["missing_in_postgres"] > 0
    assert len(current) > len(data.pg_rows) - data.counts["deleted_persons"]


def test_dbt_command_carries_the_window() -> None:
    result = SeedResult(
        seed=1,
        team_ids=[1],
        quiet_team_id=None,
        persons=1,
        events=0,
        overrides=0,
        lost_events=0,
        start="2026-01-05 00:00:00",
        end="2026-01-10 00:00:00",
        bug_window_start="2026-01-06 20:01:00",
        bug_window_end="2026-01-07 14:52:00",
        lost_fraction=0.3,
        source_database="posthog",
        counts={},
        timings={},
    )
    assert result.dbt_command() == (
        "dbt run --project-dir . --profiles-dir profiles "
        '--vars \'{bug_window_start: "2026-01-06 20:01:00", bug_window_end: "2026-01-07 14:52:00"}\' '
        "--full-refresh"
    )


def test_refuses_to_seed_remote_servers() -> None:
    class HttpClient:
        def __init__(self, url: str) -> None:
            self.url = url

    class ChdbClient:
        pass

    local_pg = "postgresql://postgres@127.0.0.1:5432/posthog"
    with pytest.raises(ConfigError, match="ClickHouse server at 'ch.example.com'"):
        refuse_remote(HttpClient("https://ch.example.com:8443"), local_pg)
    with pytest.raises(ConfigError, match="Postgres server at 'db.example.com'"):
        refuse_remote(ChdbClient(), "postgresql://u@db.example.com/posthog")
    refuse_remote(ChdbClient(), local_pg)
    refuse_remote(HttpClient("http://localhost:8123"), "host=/var/run/postgresql dbname=posthog")


def test_help_shows_every_option_with_its_environment_variable() -> None:
    from runner.cli import main

    result = CliRunner().invoke(main, ["demo", "seed", "--help"])
    assert result.exit_code == 0
    for option, env in [
        ("--teams", "RECON_DEMO_TEAMS"),
        ("--seed", "RECON_DEMO_SEED"),
        ("--reset", "RECON_DEMO_RESET"),
    ]:
        assert option in result.output and env in result.output
