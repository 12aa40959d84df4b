"""Helpers for the dbt model tests: isolated source database and target schema, in-process dbt runs,
reading the source tables back as oracle inputs, and reading the diff tables in a comparable form.

chDB allows one process per engine path, so everything runs in the pytest process on the session's
engine path (tests/conftest.py), with dbt invoked in-process (`runner.jobs.dbt.run_dbt`). Each test
module uses its own source database and target schema so that other tests' tables are never touched.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import reference_rules as rr

DIFF_COLUMNS = (
    "team_id, batch_index, person_id, baseline_version, set_keys, set_values, set_timestamps, "
    "set_once_keys, set_once_values, set_once_timestamps, unset_keys, unset_timestamps, mode, "
    "bug_window_start, bug_window_end, computed_at, invocation_id"
)
SUMMARY_COLUMNS = (
    "team_id, mode, bug_window_start, bug_window_end, events_scanned, operations, malformed_events, "
    "persons_affected, persons_with_diff, batches, computed_at, invocation_id"
)


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class ModelsEnv:
    """One isolated place for a test module: source database, target schema, dbt target path."""

    source_database: str
    target_schema: str
    target_path: Path

    @property
    def client(self) -> Any:
        from runner.stores import warehouse

        return warehouse.client()

    def init_sources(self) -> None:
        from runner.local import sources

        sources.init_sources(self.client, self.source_database)
        for table in sources.SOURCE_TABLES:
            self.client.command(f"TRUNCATE TABLE {self.source_database}.{table}")

    def drop_models(self) -> None:
        """Drop the models' tables and views (the database stays: dbt's open connection uses it)."""
        self.client.command(f"CREATE DATABASE IF NOT EXISTS {self.target_schema}")
        names = self.client.query(
            "SELECT name FROM system.tables WHERE database = {db:String}",
            parameters={"db": self.target_schema},
        ).result_rows
        for (name,) in names:
            self.client.command(f"DROP TABLE IF EXISTS {self.target_schema}.`{name}`")

    @contextmanager
    def _schema(self) -> Iterator[None]:
        previous = os.environ.get("RECON_TARGET_SCHEMA")
        os.environ["RECON_TARGET_SCHEMA"] = self.target_schema
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("RECON_TARGET_SCHEMA", None)
            else:
                os.environ["RECON_TARGET_SCHEMA"] = previous

    def dbt(self, command: str, dbt_vars: dict[str, Any] | None = None, extra: Sequence[str] = ()) -> Any:
        """`dbt <command>` in this process against this env's schema and source database."""
        from runner.jobs.dbt import run_dbt

        full_vars = {"source_database": self.source_database, **(dbt_vars or {})}
        args = ["--target-path", str(self.target_path), *extra]
        with self._schema():
            return run_dbt(command, full_vars, args)

    def operation(self, macro: str, args: dict[str, Any]) -> tuple[bool, str]:
        """`dbt run-operation <macro> --args ...`: (success, the error messages dbt logged)."""
        import json

        from dbt.cli.main import dbtRunner

        from runner.jobs.dbt import dbt_args

        errors: list[str] = []

        def collect(event: Any) -> None:
            if event.info.level == "error":
                errors.append(event.info.msg)

        argv = dbt_args(
            "run-operation",
            {"source_database": self.source_database},
            [macro, "--args", json.dumps(args), "--target-path", str(self.target_path)],
        )
        with self._schema():
            result = dbtRunner(callbacks=[collect]).invoke(argv)
        return bool(result.success), "\n".join(errors)

    def run(self, dbt_vars: dict[str, Any], extra: Sequence[str] = ()) -> Any:
        return self.dbt("run", dbt_vars, extra)

    # --- writing sources --------------------------------------------------------------------------

    def insert_events(self, events: Iterable[rr.Event], ingested_at: datetime | None = None) -> None:
        """Insert events; `ingested_at` sets their ingestion time (`inserted_at`, and `_timestamp` to
        the second), which the incremental build's watermark reads. Without it ClickHouse stamps
        `inserted_at` with its clock at the insert, as in production."""
        stamp = ingested_at or datetime(2026, 1, 1)
        rows = [
            [
                e.uuid,
                "test",
                e.properties,
                e.timestamp,
                e.team_id,
                e.distinct_id,
                e.person_id,
                stamp.replace(microsecond=0, tzinfo=None),
                *([ingested_at] if ingested_at else []),
            ]
            for e in events
        ]
        if rows:
            self.client.insert(
                f"{self.source_database}.events",
                rows,
                column_names=[
                    "uuid",
                    "event",
                    "properties",
                    "timestamp",
                    "team_id",
                    "distinct_id",
                    "person_id",
                    "_timestamp",
                    *(["inserted_at"] if ingested_at else []),
                ],
            )

    def insert_persons(self, persons: Iterable[rr.PersonRow]) -> None:
        rows = [
            [
                p.id,
                p.team_id,
                p.properties,
                p.is_deleted,
                p.version,
                p.timestamp,
                p.offset,
                datetime(2025, 1, 1),
            ]
            for p in persons
        ]
        if rows:
            self.client.insert(
                f"{self.source_database}.person",
                rows,
                column_names=[
                    "id",
                    "team_id",
                    "properties",
                    "is_deleted",
                    "version",
                    "_timestamp",
                    "_offset",
                    "created_at",
                ],
            )

    def insert_overrides(self, overrides: Iterable[rr.OverrideRow]) -> None:
        rows = [
            [
                o.team_id,
                o.distinct_id,
                o.person_id,
                o.is_deleted,
                o.version,
                o.timestamp,
                o.offset,
                o.partition,
            ]
            for o in overrides
        ]
        if rows:
            self.client.insert(
                f"{self.source_database}.person_distinct_id_overrides",
                rows,
                column_names=[
                    "team_id",
                    "distinct_id",
                    "person_id",
                    "is_deleted",
                    "version",
                    "_timestamp",
                    "_offset",
                    "_partition",
                ],
            )

    # --- reading sources back (the oracle's input is exactly what ClickHouse holds) ---------------

    def read_sources(self) -> tuple[list[rr.Event], list[rr.PersonRow], list[rr.OverrideRow]]:
        db = self.source_database
        events = [
            rr.Event(
                uuid=r[0],
                team_id=r[1],
                distinct_id=r[2],
                person_id=r[3],
                timestamp=aware(r[4]),
                properties=r[5],
            )
            for r in self.client.query(
                f"SELECT uuid, team_id, distinct_id, person_id, timestamp, properties FROM {db}.events"
            ).result_rows
        ]
        persons = [
            rr.PersonRow(
                id=r[0],
                team_id=r[1],
                properties=r[2],
                is_deleted=r[3],
                version=r[4],
                timestamp=aware(r[5]),
                offset=r[6],
            )
            for r in self.client.query(
                f"SELECT id, team_id, properties, is_deleted, version, _timestamp, _offset FROM {db}.person"
            ).result_rows
        ]
        overrides = [
            rr.OverrideRow(
                team_id=r[0],
                distinct_id=r[1],
                person_id=r[2],
                is_deleted=r[3],
                version=r[4],
                timestamp=aware(r[5]),
                offset=r[6],
                partition=r[7],
            )
            for r in self.client.query(
                "SELECT team_id, distinct_id, person_id, is_deleted, version, _timestamp, _offset, "
                "_partition "
                f"FROM {db}.person_distinct_id_overrides"
            ).result_rows
        ]
        return events, persons, overrides

    def oracle(self, config: rr.Config) -> rr.Result:
        return rr.compute(config, *self.read_sources())

    # --- reading the models -----------------------------------------------------------------------

    def diff_rows(self) -> list[tuple]:
        return [
            normalise_diff_row(row)
            for row in self.client.query(
                f"SELECT {DIFF_COLUMNS} FROM {self.target_schema}.person_property_diff "
                "ORDER BY team_id, batch_index, person_id"
            ).result_rows
        ]

    def summary_rows(self) -> list[tuple]:
        return [
            tuple(aware(v) if isinstance(v, datetime) else v for v in row)
            for row in self.client.query(
                f"SELECT {SUMMARY_COLUMNS} FROM {self.target_schema}.person_property_diff_summary "
                "ORDER BY team_id"
            ).result_rows
        ]

    def query(self, sql: str) -> list[tuple]:
        return self.client.query(sql).result_rows


def normalise_diff_row(row: Sequence[Any]) -> tuple:
    out = []
    for value in row:
        if isinstance(value, datetime):
            out.append(aware(value))
        elif isinstance(value, list):
            out.append(tuple(aware(v) if isinstance(v, datetime) else v for v in value))
        else:
            out.append(value)
    return tuple(out)


def diff_content(rows: Iterable[tuple]) -> dict[tuple[int, UUID], tuple]:
    """(team, person) -> (batch_index, baseline_version, set..., set_once..., unset...) of model rows."""
    return {(r[0], r[2]): (r[1], r[3], *r[4:12]) for r in rows}


def oracle_content(result: rr.Result) -> dict[tuple[int, UUID], tuple]:
    out = {}
    for slot, d in result.diffs.items():
        out[slot] = (
            d.batch_index,
            d.baseline_version,
            tuple(e[0] for e in d.set_entries),
            tuple(e[1] for e in d.set_entries),
            tuple(e[2] for e in d.set_entries),
            tuple(e[0] for e in d.set_once_entries),
            tuple(e[1] for e in d.set_once_entries),
            tuple(e[2] for e in d.set_once_entries),
            tuple(e[0] for e in d.unset_entries),
            tuple(e[1] for e in d.unset_entries),
        )
    return out


def summary_content(rows: Iterable[tuple]) -> dict[int, tuple]:
    """team -> (events_scanned, operations, malformed, persons_affected, persons_with_diff, batches)."""
    return {r[0]: tuple(r[4:10]) for r in rows}


def oracle_summary(result: rr.Result) -> dict[int, tuple]:
    return {
        t: (
            s.events_scanned,
            s.operations,
            s.malformed_events,
            s.persons_affected,
            s.persons_with_diff,
            s.batches,
        )
        for t, s in result.summaries.items()
    }


def explain_mismatch(actual: dict, expected: dict, limit: int = 5) -> str:
    lines = []
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    different = [k for k in expected if k in actual and actual[k] != expected[k]]
    lines.append(f"missing {len(missing)}, unexpected {len(extra)}, different {len(different)}")
    for k in missing[:limit]:
        lines.append(f"  missing {k}: expected {expected[k]}")
    for k in extra[:limit]:
        lines.append(f"  unexpected {k}: got {actual[k]}")
    for k in different[:limit]:
        lines.append(f"  {k}:\n    got      {actual[k]}\n    expected {expected[k]}")
    return "\n".join(lines)


def config_from_vars(dbt_vars: dict[str, Any]) -> rr.Config:
    return rr.Config(
        bug_window_start=rr.utc(dbt_vars["bug_window_start"]),
        bug_window_end=rr.utc(dbt_vars["bug_window_end"]),
        now=rr.utc(dbt_vars["now"]),
        window_seconds=int(dbt_vars.get("window_seconds", 0)),
        person_batch_size=int(dbt_vars.get("person_batch_size", 10_000)),
        team_ids=tuple(dbt_vars.get("team_ids", ())),
        min_team_id=dbt_vars.get("min_team_id"),
        max_team_id=dbt_vars.get("max_team_id"),
        exclude_team_ids=tuple(dbt_vars.get("exclude_team_ids", ())),
        semantics=dbt_vars.get("semantics", "original"),
    )
