"""`runner db migrate` / `runner db init-local`: idempotent, PostHog's columns, safe when concurrent."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from runner.cli import main
from runner.local import sources
from runner.stores import pg_schema

pytestmark = pytest.mark.integration

# Spec §2.6: (column, type, nullable)
BACKUP_COLUMNS = [
    ("job_id", "text", False),
    ("team_id", "integer", False),
    ("person_id", "bigint", False),
    ("uuid", "uuid", False),
    ("properties", "jsonb", False),
    ("properties_last_updated_at", "jsonb", True),
    ("properties_last_operation", "jsonb", True),
    ("version", "bigint", True),
    ("is_identified", "boolean", False),
    ("created_at", "timestamp with time zone", False),
    ("is_user_id", "integer", True),
    ("pending_operations", "jsonb", False),
    ("properties_after", "jsonb", True),
    ("properties_last_updated_at_after", "jsonb", True),
    ("properties_last_operation_after", "jsonb", True),
    ("version_after", "bigint", True),
    ("backed_up_at", "timestamp with time zone", False),
]

# Spec §2.5: the columns the job reads or writes (others may exist).
PERSON_COLUMNS = {
    "id": ("bigint", False),
    "uuid": ("uuid", False),
    "team_id": ("integer", False),
    "properties": ("jsonb", False),
    "properties_last_updated_at": ("jsonb", True),
    "properties_last_operation": ("jsonb", True),
    "version": ("bigint", True),
    "is_identified": ("boolean", False),
    "created_at": ("timestamp with time zone", False),
    "is_user_id": ("integer", True),
}


@pytest.fixture
def empty_db(stack) -> Iterator[str]:
    """A new, empty database in the session's cluster; dropped afterwards."""
    name = f"migrate_{uuid.uuid4().hex[:10]}"
    admin_url = stack["postgres"]["url"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield stack["postgres"]["url"].rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _columns(conn: psycopg.Connection, table: str) -> list[tuple[str, str, bool]]:
    rows = conn.execute(
        "SELECT column_name, data_type, is_nullable = 'YES' FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [(name, data_type, nullable) for name, data_type, nullable in rows]


def _primary_key(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) ON true"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n",
        (table,),
    ).fetchall()
    return [name for (name,) in rows]


def test_migrate_twice_applies_once(empty_db):
    every_version = [version for version, _, _ in pg_schema.MIGRATIONS]
    assert pg_schema.migrate(empty_db) == every_version
    assert pg_schema.migrate(empty_db) == []
    with psycopg.connect(empty_db) as conn:
        ledger = conn.execute("SELECT version FROM recon_schema_migrations ORDER BY version").fetchall()
        assert [v for (v,) in ledger] == every_version
        tables = {
            name for (name,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
    assert {
        "posthog_person_reconciliation_backup",
        "recon_run",
        "recon_run_team",
        "recon_outbox",
        "recon_schema_migrations",
    } <= tables
    # migrate never creates PostHog's own person table: production already has it.
    assert "posthog_person" not in tables


def test_backup_table_has_posthog_columns(empty_db):
    pg_schema.migrate(empty_db)
    with psycopg.connect(empty_db) as conn:
        assert _columns(conn, "posthog_person_reconciliation_backup") == BACKUP_COLUMNS
        assert _primary_key(conn, "posthog_person_reconciliation_backup") == [
            "job_id",
            "team_id",
            "person_id",
        ]
        indexes = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'posthog_person_reconciliation_backup'"
        ).fetchall()
    assert any("(team_id, person_id)" in definition for (definition,) in indexes)


def test_init_local_is_idempotent_with_posthog_columns(empty_db):
    sources.init_posthog_person(empty_db)
    sources.init_posthog_person(empty_db)
    with psycopg.connect(empty_db) as conn:
        columns = {
            name: (data_type, nullable) for name, data_type, nullable in _columns(conn, "posthog_person")
        }
    for name, expected in PERSON_COLUMNS.items():
        assert columns[name] == expected, name


def test_concurrent_migrations_apply_each_version_once(empty_db):
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(pg_schema.migrate(empty_db))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    applied = sorted(version for result in results for version in result)
    assert applied == [version for version, _, _ in pg_schema.MIGRATIONS]


def test_stack_database_is_migrated_and_cli_reports_up_to_date(pg_conn):
    (count,) = pg_conn.execute("SELECT count(*) FROM recon_schema_migrations").fetchone()
    assert count == len(pg_schema.MIGRATIONS)
    assert pg_conn.execute("SELECT to_regclass('posthog_person')").fetchone() == ("posthog_person",)
    result = CliRunner().invoke(main, ["db", "migrate"])
    assert result.exit_code == 0, result.output
    assert "schema up to date" in result.output


def test_clean_pg_empties_recon_tables_but_keeps_ledger(pg_conn, request):
    pg_conn.execute("INSERT INTO recon_run (job_id, kind) VALUES ('j1', 'apply')")
    pg_conn.execute(
        "INSERT INTO posthog_person (created_at, uuid, team_id, properties)"
        " VALUES (now(), gen_random_uuid(), 1, '{}')"
    )
    pg_conn.execute(
        "INSERT INTO recon_outbox (job_id, team_id, person_uuid, version, payload)"
        " VALUES ('j1', 1, gen_random_uuid(), 1, '{}')"
    )
    conn = request.getfixturevalue("clean_pg")
    assert conn is pg_conn
    for table in ("recon_run", "posthog_person", "recon_outbox"):
        (count,) = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        assert count == 0, table
    (ledger,) = conn.execute("SELECT count(*) FROM recon_schema_migrations").fetchone()
    assert ledger == len(pg_schema.MIGRATIONS)
