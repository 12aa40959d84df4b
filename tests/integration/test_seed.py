"""`runner demo seed` against the real engines: embedded ClickHouse and the throwaway Postgres."""

from __future__ import annotations

import json
from collections import defaultdict

import psycopg
import pytest
from click.testing import CliRunner

from runner.local.seed import (
    apply_operations,
    clickhouse_fingerprint,
    operations_from_properties,
    postgres_fingerprint,
    seed,
)
from runner.stores import warehouse

pytestmark = pytest.mark.integration

DB = "seed_test"  # not `posthog`: other tests own that database
SIZE = {"teams": 4, "persons": 1500, "events": 15000}


def _query(sql: str) -> list[tuple]:
    return warehouse.client().query(sql).result_rows


def test_same_seed_writes_identical_tables_and_another_seed_differs(pg_url: str) -> None:
    cli = warehouse.client()
    first = seed(3, 400, 5000, 11, pg_url=pg_url, source_database=DB)
    fingerprints = clickhouse_fingerprint(cli, DB), postgres_fingerprint(pg_url)
    assert fingerprints[0]["events"][0] == first.events == 5000
    assert fingerprints[0]["person_distinct_id_overrides"][0] == first.overrides
    assert fingerprints[0]["person"][0] == first.counts["clickhouse_person_rows"]
    assert fingerprints[1][0] == first.counts["postgres_persons"]

    again = seed(3, 400, 5000, 11, pg_url=pg_url, source_database=DB)
    assert (clickhouse_fingerprint(cli, DB), postgres_fingerprint(pg_url)) == fingerprints
    assert again.counts == first.counts

    seed(3, 400, 5000, 12, pg_url=pg_url, source_database=DB)
    other_ch, other_pg = clickhouse_fingerprint(cli, DB), postgres_fingerprint(pg_url)
    for table, (_, digest) in fingerprints[0].items():
        assert other_ch[table][1] != digest, table
    assert other_pg[1] != fingerprints[1][1]


def test_no_reset_appends(pg_url: str) -> None:
    seed(2, 50, 500, 1, pg_url=pg_url, source_database=DB)
    seed(2, 50, 500, 2, pg_url=pg_url, source_database=DB, reset=False)
    assert _query(f"SELECT count() FROM {DB}.events")[0][0] == 1000
    with psycopg.connect(pg_url) as conn:
        count, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM posthog_person").fetchone()
    assert count == distinct > 50


def _resolved_operation_events() -> list[tuple[str, int, str]]:
    """(resolved person, timestamp µs, properties) per spec R2.4/R5.3, computed by ClickHouse."""
    return _query(
        f"""
        WITH live AS (
            SELECT team_id, distinct_id, argMax(person_id, version) AS person_id
            FROM {DB}.person_distinct_id_overrides
            GROUP BY team_id, distinct_id
            HAVING argMax(is_deleted, version) = 0
        )
        SELECT toString(if(o.distinct_id != '', o.person_id, e.person_id)),
               toUnixTimestamp64Micro(e.timestamp),
               e.properties
        FROM {DB}.events AS e
        LEFT JOIN live AS o ON o.team_id = e.team_id AND o.distinct_id = e.distinct_id
        WHERE JSONHas(e.properties, '$set') OR JSONHas(e.properties, '$set_once')
           OR JSONHas(e.properties, '$unset')
        """
    )


def _current_persons() -> dict[str, tuple[int, dict, int, int]]:
    """Current ClickHouse state (spec R2.2): uuid -> (team, properties, version, created_at ms)."""
    rows = _query(
        f"""
        SELECT toString(id), any(team_id), argMax(properties, version), max(version),
               toUnixTimestamp64Milli(any(created_at))
        FROM {DB}.person GROUP BY id HAVING argMax(is_deleted, version) = 0
        """
    )
    return {uuid: (team, json.loads(props), version, created) for uuid, team, props, version, created in rows}


def test_shape_of_the_demo_data(pg_url: str) -> None:
    result = seed(**SIZE, seed=7, pg_url=pg_url, source_database=DB)
    counts = result.counts
    w0, w1 = (
        f"toDateTime64('{result.bug_window_start}', 6, 'UTC')",
        f"toDateTime64('{result.bug_window_end}', 6, 'UTC')",
    )

    # events: in the past, in range, with the oddities the pipeline must survive
    (n, malformed, blocklisted, unset_objects, non_object_sets, too_late, quiet_in_window) = _query(
        f"""
        SELECT count(), countIf(NOT isValidJSON(properties)),
               countIf(JSONHas(JSONExtractRaw(properties, '$set'), '$browser')
                       OR has(JSONExtract(properties, '$unset', 'Array(String)'), '$browser')),
               countIf(JSONType(properties, '$unset') = 'Object'),
               countIf(JSONHas(properties, '$set') AND JSONType(properties, '$set') != 'Object'),
               countIf(timestamp >= now64() OR timestamp < toDateTime64('{result.start}', 6, 'UTC')),
               countIf(team_id = {result.quiet_team_id} AND timestamp >= {w0} AND timestamp < {w1}
                       AND (JSONHas(properties, '$set') OR JSONHas(properties, '$set_once')
                            OR JSONHas(properties, '$unset')))
        FROM {DB}.events
        """
    )[0]
    assert n == result.events == SIZE["events"]
    assert malformed == counts["malformed_events"] > 0
    assert blocklisted > 0 and unset_objects > 0 and non_object_sets > 0
    assert too_late == 0 and quiet_in_window == 0

    # overrides: versions > 0, some deleted at a higher version, some distinct_ids overridden twice
    deleted, twice, min_version = _query(
        f"""
        SELECT countIf(deleted = 1), countIf(versions >= 2 AND deleted = 0), min(low)
        FROM (SELECT argMax(is_deleted, version) AS deleted, count() AS versions, min(version) AS low
              FROM {DB}.person_distinct_id_overrides GROUP BY team_id, distinct_id)
        """
    )[0]
    assert deleted == counts["deleted_overrides"] > 0
    assert twice == counts["distinct_ids_overridden_twice"] > 0 and min_version >= 1

    # person: history rows and tombstones
    rows, ids, tombstones = _query(
        f"SELECT count(), uniqExact(id), countIf(is_deleted = 1) FROM {DB}.person"
    )[0]
    assert rows > ids and tombstones == counts["merged_persons"] + counts["deleted_persons"]

    # Postgres agrees with ClickHouse's current state (uuid, team, properties, version, created_at)
    current = _current_persons()
    with psycopg.connect(pg_url) as conn:
        pg = {
            str(uuid): (team, props, version, created)
            for uuid, team, props, version, created in conn.execute(
                "SELECT uuid, team_id, properties, version, (extract(epoch FROM created_at) * 1000)::bigint"
                " FROM posthog_person"
            )
        }
    both = current.keys() & pg.keys()
    assert len(current.keys() - pg.keys()) == counts["missing_in_postgres"] > 0
    assert (
        sum(1 for (_, _, version, _) in pg.values() if version is None)
        == counts["null_version_in_postgres"]
        > 0
    )
    for uuid in both:
        team, props, version, created = current[uuid]
        pg_team, pg_props, pg_version, pg_created = pg[uuid]
        assert (pg_team, pg_props, pg_created) == (team, props, created), uuid
        assert pg_version in (version, None), uuid

    # lost updates: replaying every resolved event differs from the stored state for some persons,
    # and only for persons with operations inside the bug window
    events: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for person, ts, properties in _resolved_operation_events():
        events[person].append((ts, properties))
    lo, hi = (int(x) for x in _query(f"SELECT toUnixTimestamp64Micro({w0}), toUnixTimestamp64Micro({w1})")[0])
    differing, in_window = [], set()
    for uuid, (_, props, _, _) in current.items():
        state: dict = {}
        for ts, properties in sorted(events.get(uuid, [])):
            ops = operations_from_properties(properties)
            apply_operations(state, ops)
            if ops and lo <= ts < hi:
                in_window.add(uuid)
        if state != props:
            differing.append(uuid)
    assert differing and set(differing) <= in_window
    assert len(current) - len(in_window) > len(differing)


def test_cli_prints_summary_and_json(pg_url: str) -> None:
    from runner.cli import main

    args = ["demo", "seed", "--teams", "2", "--persons", "40", "--events", "400", "--seed", "3"]
    args += ["--source-database", DB]
    text = CliRunner().invoke(main, args)
    assert text.exit_code == 0, text.output
    assert "bug window [2026-01-06 20:01:00, 2026-01-07 14:52:00)" in text.output
    assert (
        'dbt run --project-dir . --profiles-dir profiles --vars \'{bug_window_start: "2026-01-06 20:01:00", '
        f'bug_window_end: "2026-01-07 14:52:00", source_database: "{DB}"}}\'' in text.output
    )

    out = CliRunner().invoke(main, [*args, "--lost-fraction", "1", "--output", "json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    assert payload["events"] == 400 and payload["team_ids"] == [1, 2] and payload["lost_fraction"] == 1.0
    assert payload["lost_events"] == payload["counts"]["window_operation_events"]
    assert payload["dbt_vars"]["source_database"] == DB
