"""`runner warehouse ...`: the ClickHouse side (source tables; local person ingestion)."""

from __future__ import annotations

import click

from runner import settings
from runner import warehouse as wh


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
def init(source_database: str) -> None:
    """Create PostHog's source tables in ClickHouse (idempotent; for local use)."""
    tables = wh.init_sources(database=source_database)
    click.echo(f"source tables ready in {source_database}: {', '.join(tables)}")


warehouse = warehouse_group
