"""DDL of the tables production already has, for local stacks only.

PostHog's ClickHouse sources (`events`, `person`, `person_distinct_id_overrides`, spec §2, plus the
metrics table of §2.8) and Postgres `posthog_person`. recon never creates or alters these in
production; `runner warehouse init`, `runner db init-local`, `runner stack up` and the demo seed use them.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from runner.config import settings
from runner.stores import pg_schema
from runner.stores.warehouse import client, ident

POSTHOG_PERSON_DDL = """
CREATE TABLE IF NOT EXISTS posthog_person (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    properties_last_updated_at jsonb DEFAULT '{}'::jsonb,
    properties_last_operation jsonb,
    properties jsonb NOT NULL DEFAULT '{}'::jsonb,
    is_identified boolean NOT NULL DEFAULT false,
    uuid uuid NOT NULL,
    team_id integer NOT NULL,
    is_user_id integer,
    version bigint,
    last_seen_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS posthog_person_team_uuid ON posthog_person (team_id, uuid);
CREATE INDEX IF NOT EXISTS posthog_person_uuid ON posthog_person (uuid);
"""


def init_posthog_person(url: str) -> None:
    """Create PostHog's `posthog_person` table (idempotent)."""
    with pg_schema.connect(url) as conn:
        conn.execute(POSTHOG_PERSON_DDL)


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
    _offset UInt64,
    INDEX kafka_timestamp_minmax_events _timestamp TYPE minmax GRANULARITY 3,
    INDEX minmax_inserted_at COALESCE(inserted_at, _timestamp) TYPE minmax GRANULARITY 1
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
