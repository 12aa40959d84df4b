"""`runner db`: recon's Postgres tables (`runner.stores.pg_schema`); locally also PostHog's person table."""

from __future__ import annotations

import importlib

import click

from runner.config import settings
from runner.stores import pg_schema

# `init-local` runs the local-only tooling, loaded by name when the command runs, so production code
# never imports `runner.local` (tests/unit/test_import_direction.py, test_layout.py).
_LOCAL_SOURCES = "runner.local.sources"


@click.group("db")
def db() -> None:
    """Postgres (persons database): recon's tables and, locally, PostHog's person table."""


@db.command("migrate")
def migrate_cmd() -> None:
    """Create or upgrade recon's tables (backup, run ledger, outbox). Idempotent."""
    applied = pg_schema.migrate()
    if applied:
        click.echo(f"applied migrations: {', '.join(map(str, applied))}")
    else:
        click.echo("schema up to date")


@db.command("init-local")
def init_local_cmd() -> None:
    """Create PostHog's posthog_person table. For local stacks only: recon never alters production's."""
    importlib.import_module(_LOCAL_SOURCES).init_posthog_person(settings.persons_db_url() or "")
    click.echo("posthog_person ready")
