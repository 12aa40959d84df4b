"""`runner warehouse ...` (local only): PostHog's source tables and local ingestion of the person topic."""

from __future__ import annotations

import click

from runner.config import settings
from runner.local import guard, sources
from runner.stores import warehouse as wh

_ALLOW_REMOTE = click.option(
    "--allow-remote",
    is_flag=True,
    help="Run even when ClickHouse is a server off this machine (this command is meant for local use).",
)


@click.group("warehouse")
def warehouse_group() -> None:
    """ClickHouse sources (PostHog's tables) and local ingestion of the person topic."""


@warehouse_group.command("init")
@click.option(
    "--source-database",
    envvar=settings.ENV_SOURCE_DB,
    show_envvar=True,
    default=settings.DEFAULT_SOURCE_DB,
    show_default=True,
    help="Database holding PostHog's tables (the dbt var source_database).",
)
@_ALLOW_REMOTE
def init(source_database: str, allow_remote: bool) -> None:
    """Create PostHog's source tables in ClickHouse (idempotent; for local use)."""
    if not allow_remote:
        guard.refuse_remote_clickhouse(settings.clickhouse_url(), "create PostHog's tables")
    tables = sources.init_sources(database=source_database)
    click.echo(f"source tables ready in {source_database}: {', '.join(tables)}")


warehouse = warehouse_group


@warehouse_group.command("sync-persons")
@click.option(
    "--resume/--from-beginning",
    default=False,
    show_default=True,
    envvar="RECON_SYNC_RESUME",
    show_envvar=True,
    help="Start from the offsets the previous sync remembered instead of the beginning of the topic. "
    "Either way is correct (rows are versioned); resuming is faster.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    envvar="RECON_SYNC_TIMEOUT",
    show_envvar=True,
    help="Seconds to wait for the broker and for each partition to signal its end.",
)
@_ALLOW_REMOTE
def sync_persons(resume: bool, timeout: float, allow_remote: bool) -> None:
    """Ingest the person topic into ClickHouse `person` (what production's Kafka engine does).

    Reads every partition up to its end and inserts each message as a versioned `person` row;
    ingesting a message twice changes nothing (`ReplacingMergeTree(version)`). Refuses a ClickHouse
    server off this machine unless --allow-remote: in production the Kafka table engine ingests the
    topic, and a second writer is not wanted.
    """
    from runner.local.person_sync import sync_persons as run_sync

    cfg = settings.Settings.load()
    if not allow_remote:
        guard.refuse_remote_clickhouse(cfg.clickhouse_url, "ingest the person topic")
    bootstrap = settings.kafka_bootstrap()
    assert bootstrap is not None
    result = run_sync(
        wh.client(cfg.clickhouse_url),
        bootstrap,
        cfg.person_topic,
        source_db=cfg.source_database,
        schema=cfg.target_schema,
        resume=resume,
        timeout=timeout,
    )
    click.echo(
        f"{cfg.person_topic}: {result.messages} messages from {result.partitions} partitions, "
        f"{result.inserted} person rows inserted into {cfg.source_database}.person"
        + (f", {result.malformed} malformed skipped" if result.malformed else "")
    )
