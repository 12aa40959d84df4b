"""One seeding run, `seed(...) -> SeedResult`: check the configuration, refuse a store that is not local,
generate while the events are inserted, then write the persons to ClickHouse and Postgres, timing each.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from runner.config import settings
from runner.local import guard
from runner.local.seed.clickhouse import EventInserter, prepare_clickhouse, write_clickhouse_persons
from runner.local.seed.config import (
    DEFAULT_BUG_WINDOW_END,
    DEFAULT_BUG_WINDOW_START,
    DEFAULT_DAYS,
    DEFAULT_LOST_FRACTION,
    DEFAULT_START,
    TIME_FORMAT,
    SeedConfig,
    parse_time,
)
from runner.local.seed.generator import generate
from runner.local.seed.postgres import write_postgres


def refuse_remote(cli: Any, pg_url: str) -> None:
    """Demo data replaces PostHog's tables: never write it to a shared server by accident."""
    if type(cli).__name__ != "ChdbClient":
        guard.refuse_remote_clickhouse(str(getattr(cli, "url", "")), "write demo data")
    guard.refuse_remote_postgres(pg_url, "write demo data")


@dataclass(frozen=True)
class SeedResult:
    seed: int
    team_ids: list[int]
    quiet_team_id: int | None
    persons: int
    events: int
    overrides: int
    lost_events: int
    start: str
    end: str
    bug_window_start: str
    bug_window_end: str
    lost_fraction: float
    source_database: str
    counts: dict[str, int]
    timings: dict[str, float]

    def dbt_vars(self) -> dict[str, str]:
        dbt_vars = {"bug_window_start": self.bug_window_start, "bug_window_end": self.bug_window_end}
        if self.source_database != settings.DEFAULT_SOURCE_DB:
            dbt_vars["source_database"] = self.source_database
        return dbt_vars

    def dbt_command(self) -> str:
        inner = ", ".join(f'{k}: "{v}"' for k, v in self.dbt_vars().items())
        # --full-refresh: the seed replaced the sources, history included, so incremental state from an
        # earlier build no longer describes them.
        return f"dbt run --project-dir . --profiles-dir profiles --vars '{{{inner}}}' --full-refresh"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dbt_vars": self.dbt_vars(), "dbt_command": self.dbt_command()}


def seed(
    teams: int,
    persons: int,
    events: int,
    seed: int,
    *,
    start: str = DEFAULT_START,
    days: int = DEFAULT_DAYS,
    bug_window_start: str = DEFAULT_BUG_WINDOW_START,
    bug_window_end: str = DEFAULT_BUG_WINDOW_END,
    lost_fraction: float = DEFAULT_LOST_FRACTION,
    reset: bool = True,
    clickhouse: Any = None,
    pg_url: str | None = None,
    source_database: str | None = None,
    allow_remote: bool = False,
) -> SeedResult:
    """Generate the demo dataset and write it to ClickHouse and Postgres.

    `clickhouse` is a clickhouse-connect client (default `warehouse.client()`); `pg_url` defaults to
    `PERSONS_DB_WRITER_URL` or the local stack. Both must be local (embedded ClickHouse or loopback
    hosts) unless `allow_remote`: seeding empties PostHog's tables.
    """
    from runner.stores import warehouse

    config = SeedConfig(
        teams=teams,
        persons=persons,
        events=events,
        seed=seed,
        start=start,
        days=days,
        bug_window_start=bug_window_start,
        bug_window_end=bug_window_end,
        lost_fraction=lost_fraction,
    )
    config.validate()
    database = source_database or settings.source_database()
    warehouse.ident(database)
    url = pg_url or settings.persons_db_url()
    assert url is not None
    cli = clickhouse or warehouse.client()
    if not allow_remote:
        refuse_remote(cli, url)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    prepare_clickhouse(cli, database, reset)
    inserter = EventInserter(cli, database)
    try:
        dataset = generate(config, event_sink=inserter.put)
    finally:
        inserter.close()
    timings["events_s"] = round(time.perf_counter() - started, 3)
    mark = time.perf_counter()
    write_clickhouse_persons(dataset, cli, database)
    timings["clickhouse_persons_s"] = round(time.perf_counter() - mark, 3)
    mark = time.perf_counter()
    write_postgres(dataset, url, reset)
    timings["postgres_s"] = round(time.perf_counter() - mark, 3)
    timings["total_s"] = round(time.perf_counter() - started, 3)
    end = parse_time(config.start, "--start") + timedelta(days=config.days)
    return SeedResult(
        seed=seed,
        team_ids=dataset.team_ids,
        quiet_team_id=dataset.quiet_team_id,
        persons=dataset.counts["persons"],
        events=dataset.counts["events"],
        overrides=dataset.counts["overrides"],
        lost_events=dataset.counts["lost_events"],
        start=config.start,
        end=end.strftime(TIME_FORMAT),
        bug_window_start=config.bug_window_start,
        bug_window_end=config.bug_window_end,
        lost_fraction=config.lost_fraction,
        source_database=database,
        counts=dataset.counts,
        timings=timings,
    )
