"""ClickHouse access: one client factory and the DDL of PostHog's source tables.

The same code talks to the embedded engine (`chdb:///path`) and to a server (`http(s)://...`).
chDB allows one engine path per process, so the client is cached per process.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from runner import settings

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ident(name: str) -> str:
    """Validate a database/table identifier before it is placed in SQL."""
    if not _IDENT.match(name):
        raise settings.ConfigError(f"invalid ClickHouse identifier: {name!r}")
    return f"`{name}`"


@lru_cache(maxsize=4)
def _client_for(url: str) -> Client:
    if url.startswith("chdb://"):
        path = url[len("chdb://") :]
        if path and path != "memory":
            from pathlib import Path

            Path(path).mkdir(parents=True, exist_ok=True)
    return clickhouse_connect.get_client(dsn=url)


def client(url: str | None = None) -> Client:
    return _client_for(url or settings.clickhouse_url())


def is_embedded(url: str | None = None) -> bool:
    return (url or settings.clickhouse_url()).startswith("chdb://")


def _events_ddl(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.events
(
    uuid UUID,
    event String,
    properties String CODEC(ZSTD(3)),
    timestamp DateTime64(6, 'UTC'),
    team_id Int64,
    distinct_id String,
    elements_chain String,
    created_at DateTime64(6, 'UTC'),
    person_id UUID,
    person_created_at DateTime64(3),
    person_properties String CODEC(ZSTD(3)),
    group0_properties String CODEC(ZSTD(3)),
    group1_properties String CODEC(ZSTD(3)),
    group2_properties String CODEC(ZSTD(3)),
    group3_properties String CODEC(ZSTD(3)),
    group4_properties String CODEC(ZSTD(3)),
    group0_created_at DateTime64(3),
    group1_created_at DateTime64(3),
    group2_created_at DateTime64(3),
    group3_created_at DateTime64(3),
    group4_created_at DateTime64(3),
    person_mode Enum8('full' = 0, 'propertyless' = 1, 'force_upgrade' = 2),
    `$group_0` String MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_0'), '^"|"$', ''),
    `$group_1` String MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_1'), '^"|"$', ''),
    `$group_2` String MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_2'), '^"|"$', ''),
    `$group_3` String MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_3'), '^"|"$', ''),
    `$group_4` String MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$group_4'), '^"|"$', ''),
    `$window_id` String MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$window_id'), '^"|"$', ''),
    `$session_id` String
        MATERIALIZED replaceRegexpAll(JSONExtractRaw(properties, '$session_id'), '^"|"$', ''),
    inserted_at Nullable(DateTime64(6, 'UTC')) DEFAULT now64(),
    _timestamp DateTime,
    _offset UInt64
)
ENGINE = ReplacingMergeTree(_timestamp)
PARTITION BY toYYYYMM(timestamp)
ORDER BY (team_id, toDate(timestamp), event, cityHash64(distinct_id), cityHash64(uuid))
SAMPLE BY cityHash64(distinct_id)
"""


def _person_ddl(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.person
(
    id UUID,
    created_at DateTime64(3),
    team_id Int64,
    properties String,
    is_identified Int8,
    is_deleted Int8 DEFAULT 0,
    version UInt64,
    last_seen_at Nullable(DateTime64(3)),
    _timestamp DateTime,
    _offset UInt64,
    INDEX kafka_timestamp_minmax_person _timestamp TYPE minmax GRANULARITY 3
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team_id, id)
"""


def _overrides_ddl(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.person_distinct_id_overrides
(
    team_id Int64,
    distinct_id String,
    person_id UUID,
    is_deleted Int8,
    version Int64,
    _timestamp DateTime,
    _offset UInt64,
    _partition UInt64,
    INDEX kafka_timestamp_minmax_pdi_overrides _timestamp TYPE minmax GRANULARITY 3
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (team_id, distinct_id)
SETTINGS index_granularity = 512
"""


def _metrics_ddl(db: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {db}.custom_metrics_counter_events
(
    name String,
    timestamp DateTime64(3, 'UTC') DEFAULT now(),
    labels Map(String, String),
    increment Float64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (name, timestamp)
"""


def _metrics_view_ddl(db: str) -> str:
    return f"""
CREATE VIEW IF NOT EXISTS {db}.custom_metrics_counters AS
SELECT name, labels, sum(increment) AS value
FROM {db}.custom_metrics_counter_events
GROUP BY name, labels
"""


SOURCE_TABLES = ("events", "person", "person_distinct_id_overrides")


def init_sources(cli: Client | None = None, database: str | None = None) -> list[str]:
    """Create PostHog's source tables (local use only; production already has them)."""
    cli = cli or client()
    db = ident(database or settings.source_database())
    cli.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    for make_ddl in (_events_ddl, _person_ddl, _overrides_ddl, _metrics_ddl, _metrics_view_ddl):
        cli.command(make_ddl(db))
    return [*SOURCE_TABLES, "custom_metrics_counter_events", "custom_metrics_counters"]


def query_rows(sql: str, parameters: dict[str, Any] | None = None, cli: Client | None = None) -> list[tuple]:
    return [tuple(row) for row in (cli or client()).query(sql, parameters=parameters).result_rows]
