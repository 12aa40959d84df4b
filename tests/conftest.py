"""Shared fixtures.

The whole session uses one state directory and one embedded ClickHouse path (chDB allows one engine
path per process), set before anything opens the engine. Subprocesses that need their own engine
must use another path (see `fresh_chdb_path`).

The real local stack (throwaway Postgres + Tansu broker, `runner.local.stack`) starts once per session in
the session state directory, on first use of `stack` (or of `pg_url`, `kafka_bootstrap`, `pg_conn`,
`clean_pg`), and stops at the end. `runner.config.settings` finds it through that directory's `stack.json`,
so code under test needs no environment variables. Kafka helpers are in `kafka_util.py`
(`from kafka_util import read_topic`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

SESSION_STATE: Path | None = None

# Set once per pytest process to the engine path the session uses, so that fixtures of other test
# trees (adapters/dbt-chdb/tests) and this one agree on it whichever runs first.
SESSION_CHDB_ENV = "RECON_TEST_SESSION_CHDB_PATH"

# recon's own tables and PostHog's person table; the migration ledger is kept.
_KEEP_TABLES = {"recon_schema_migrations"}


@pytest.fixture(scope="session", autouse=True)
def recon_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    global SESSION_STATE
    state = tmp_path_factory.mktemp("recon-state")
    SESSION_STATE = state
    chdb_path = os.environ.get(SESSION_CHDB_ENV) or str(state / "clickhouse")
    env = {
        "RECON_STATE_DIR": str(state),
        "RECON_CHDB_PATH": chdb_path,
        SESSION_CHDB_ENV: chdb_path,
    }
    for key in ("RECON_CLICKHOUSE_URL", "PERSONS_DB_WRITER_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        os.environ.pop(key, None)
    os.environ.update(env)
    return env


@pytest.fixture
def fresh_chdb_path(tmp_path: Path) -> Path:
    """An engine path no test in this process has opened: for subprocesses that need chDB."""
    return tmp_path / "clickhouse"


@pytest.fixture(scope="session")
def stack(recon_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The local stack (content of stack.json), started once for the session and stopped at its end."""
    from runner.local import stack as local_stack

    info = local_stack.up(recon_env["RECON_STATE_DIR"])
    try:
        yield info
    finally:
        local_stack.down(recon_env["RECON_STATE_DIR"], purge=True)


@pytest.fixture(scope="session")
def pg_url(stack: dict[str, Any]) -> str:
    return str(stack["postgres"]["url"])


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: dict[str, Any]) -> str:
    return str(stack["kafka"]["bootstrap_servers"])


@pytest.fixture
def pg_conn(pg_url: str) -> Iterator[psycopg.Connection]:
    """A psycopg connection to the session's `posthog` database, in autocommit mode."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def clean_pg(pg_conn: psycopg.Connection) -> psycopg.Connection:
    """Empty `posthog_person` and recon's tables (not the migration ledger); returns `pg_conn`."""
    tables = [
        name
        for (name,) in pg_conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND (tablename LIKE %s OR tablename LIKE %s)",
            ("posthog\\_person%", "recon\\_%"),
        )
        if name not in _KEEP_TABLES
    ]
    if tables:
        pg_conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(name) for name in sorted(tables))
            )
        )
    return pg_conn
