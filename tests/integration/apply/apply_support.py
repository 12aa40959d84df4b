"""Test data for `runner apply`: the two diff tables of docs/contracts.md (created here with exactly the
contract's columns, independent of the dbt models), ClickHouse person rows and Postgres persons.

Also runnable as a script (`python apply_support.py seed.json`) so that a subprocess with its own chDB
path can be given the same data (chDB allows one process per engine path).
"""

from __future__ import annotations

import json
import sys
import uuid as uuid_mod
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

SCHEMA = "recon"
SOURCE_DB = "posthog"

DIFF_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.person_property_diff
(
    team_id Int64,
    batch_index UInt32,
    person_id UUID,
    baseline_version UInt64,
    set_keys Array(String),
    set_values Array(String),
    set_timestamps Array(DateTime64(6, 'UTC')),
    set_once_keys Array(String),
    set_once_values Array(String),
    set_once_timestamps Array(DateTime64(6, 'UTC')),
    unset_keys Array(String),
    unset_timestamps Array(DateTime64(6, 'UTC')),
    mode String,
    bug_window_start DateTime64(6, 'UTC'),
    bug_window_end DateTime64(6, 'UTC'),
    computed_at DateTime64(6, 'UTC'),
    invocation_id String
)
ENGINE = MergeTree
ORDER BY (team_id, batch_index, person_id)
"""

SUMMARY_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.person_property_diff_summary
(
    team_id Int64,
    mode String,
    bug_window_start DateTime64(6, 'UTC'),
    bug_window_end DateTime64(6, 'UTC'),
    events_scanned UInt64,
    operations UInt64,
    malformed_events UInt64,
    persons_affected UInt64,
    persons_with_diff UInt64,
    batches UInt32,
    computed_at DateTime64(6, 'UTC'),
    invocation_id String
)
ENGINE = MergeTree
ORDER BY team_id
"""

W0 = datetime(2026, 1, 6, 20, 1, tzinfo=UTC)
W1 = datetime(2026, 1, 7, 14, 52, tzinfo=UTC)
TS = datetime(2026, 1, 7, 9, 0, tzinfo=UTC)
CREATED = datetime(2025, 11, 3, 10, 20, 30, 123000, tzinfo=UTC)


@dataclass
class Diff:
    """A diff row: values are raw JSON text, as the models write them."""

    team_id: int
    person_id: UUID
    baseline_version: int
    set: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    set_once: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    unset: dict[str, datetime] = field(default_factory=dict)
    batch_index: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "team_id": self.team_id,
            "person_id": str(self.person_id),
            "baseline_version": self.baseline_version,
            "set": {k: [v, t.isoformat()] for k, (v, t) in self.set.items()},
            "set_once": {k: [v, t.isoformat()] for k, (v, t) in self.set_once.items()},
            "unset": {k: t.isoformat() for k, t in self.unset.items()},
            "batch_index": self.batch_index,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Diff:
        return cls(
            d["team_id"],
            UUID(d["person_id"]),
            d["baseline_version"],
            {k: (v, datetime.fromisoformat(t)) for k, (v, t) in d["set"].items()},
            {k: (v, datetime.fromisoformat(t)) for k, (v, t) in d["set_once"].items()},
            {k: datetime.fromisoformat(t) for k, t in d["unset"].items()},
            d["batch_index"],
        )


def ensure_tables(client: Any) -> None:
    from runner.local import sources

    sources.init_sources(client, SOURCE_DB)
    client.command(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
    client.command(DIFF_DDL.format(schema=SCHEMA))
    client.command(SUMMARY_DDL.format(schema=SCHEMA))


def reset_tables(client: Any) -> None:
    ensure_tables(client)
    for table in (
        f"{SCHEMA}.person_property_diff",
        f"{SCHEMA}.person_property_diff_summary",
        f"{SOURCE_DB}.person",
        f"{SOURCE_DB}.custom_metrics_counter_events",
    ):
        client.command(f"TRUNCATE TABLE {table}")


def insert_diffs(client: Any, diffs: Iterable[Diff], invocation_id: str = "test-build") -> None:
    now = datetime.now(UTC)
    rows = []
    for d in diffs:
        rows.append(
            [
                d.team_id,
                d.batch_index,
                d.person_id,
                d.baseline_version,
                list(d.set),
                [v for v, _ in d.set.values()],
                [t for _, t in d.set.values()],
                list(d.set_once),
                [v for v, _ in d.set_once.values()],
                [t for _, t in d.set_once.values()],
                list(d.unset),
                list(d.unset.values()),
                "single_pass",
                W0,
                W1,
                now,
                invocation_id,
            ]
        )
    if rows:
        client.insert(
            "person_property_diff",
            rows,
            database=SCHEMA,
            column_names=[
                "team_id",
                "batch_index",
                "person_id",
                "baseline_version",
                "set_keys",
                "set_values",
                "set_timestamps",
                "set_once_keys",
                "set_once_values",
                "set_once_timestamps",
                "unset_keys",
                "unset_timestamps",
                "mode",
                "bug_window_start",
                "bug_window_end",
                "computed_at",
                "invocation_id",
            ],
        )


def insert_summary(client: Any, persons_with_diff: dict[int, int], invocation_id: str = "test-build") -> None:
    now = datetime.now(UTC)
    rows = [
        [team, "single_pass", W0, W1, 0, 0, 0, n, n, 1 if n else 0, now, invocation_id]
        for team, n in sorted(persons_with_diff.items())
    ]
    if rows:
        client.insert(
            "person_property_diff_summary",
            rows,
            database=SCHEMA,
            column_names=[
                "team_id",
                "mode",
                "bug_window_start",
                "bug_window_end",
                "events_scanned",
                "operations",
                "malformed_events",
                "persons_affected",
                "persons_with_diff",
                "batches",
                "computed_at",
                "invocation_id",
            ],
        )


def insert_ch_persons(client: Any, rows: Iterable[tuple[int, UUID, dict[str, Any] | str, int]]) -> None:
    """(team_id, uuid, properties, version) rows of ClickHouse `person` (several versions per person ok)."""
    data = [
        [pid, CREATED.replace(tzinfo=None), team, p if isinstance(p, str) else json.dumps(p), 0, 0, v]
        for team, pid, p, v in rows
    ]
    if data:
        client.insert(
            "person",
            data,
            database=SOURCE_DB,
            column_names=[
                "id",
                "created_at",
                "team_id",
                "properties",
                "is_identified",
                "is_deleted",
                "version",
            ],
            settings={"optimize_on_insert": 0},  # keep every version, as separate Kafka messages would
        )


def insert_pg_person(
    conn: psycopg.Connection,
    team_id: int,
    person_uuid: UUID,
    properties: dict[str, Any],
    version: int | None,
    *,
    last_updated_at: dict[str, Any] | None = None,
    last_operation: dict[str, Any] | None = None,
    is_identified: bool = True,
    created_at: datetime = CREATED,
) -> int:
    row = conn.execute(
        """
        INSERT INTO posthog_person (created_at, properties_last_updated_at, properties_last_operation,
                                    properties, is_identified, uuid, team_id, version)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id
        """,
        (
            created_at,
            None if last_updated_at is None else json.dumps(last_updated_at),
            None if last_operation is None else json.dumps(last_operation),
            json.dumps(properties),
            is_identified,
            person_uuid,
            team_id,
            version,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def new_uuid(n: int | None = None) -> UUID:
    """Deterministic when n is given (ordering in tests), random otherwise."""
    return UUID(int=(0x0190F3A8_0000_7000_8000_000000000000 | n)) if n is not None else uuid_mod.uuid4()


def seed_file(path: Path, diffs: list[Diff], summary: dict[int, int], ch_persons: list[tuple]) -> None:
    path.write_text(
        json.dumps(
            {
                "diffs": [d.to_json() for d in diffs],
                "summary": {str(k): v for k, v in summary.items()},
                "ch_persons": [[t, str(u), p, v] for t, u, p, v in ch_persons],
            }
        )
    )


def seed_from_file(client: Any, path: Path) -> None:
    spec = json.loads(path.read_text())
    reset_tables(client)
    insert_diffs(client, [Diff.from_json(d) for d in spec["diffs"]])
    insert_summary(client, {int(k): v for k, v in spec["summary"].items()})
    insert_ch_persons(client, [(t, UUID(u), p, v) for t, u, p, v in spec["ch_persons"]])


if __name__ == "__main__":
    from runner.stores import warehouse

    seed_from_file(warehouse.client(), Path(sys.argv[1]))
