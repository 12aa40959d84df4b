"""Connections to Postgres for apply and restore: the batch connections (`connect`: R9.1 session
settings, never autocommit, jsonb decoded exactly, and the chunk table the writes use,
`runner.stores.persons`), the reader connection for reads outside the batches (`connect_reader`), and
`Control`, the ledger's autocommit connection shared by a run's threads. Every connection gives up an
attempt after connect_timeout, finds a vanished peer through TCP keepalives, and is opened again with
bounded backoff while Postgres cannot be reached (`with_reconnect`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import set_json_loads

from runner.rules.merge import exact_json_loads, json_loads
from runner.stores.apply_sets import STAGE_DDL
from runner.stores.persons import CHUNK_DDL

log = logging.getLogger("runner.persons")

APPLICATION_NAME = "person_property_reconciliation"

# R9.1; lock_timeout only guards statements that could wait at all: row locks are taken with
# SKIP LOCKED and the writes touch rows this transaction already holds.
SESSION_SETTINGS = (
    ("application_name", APPLICATION_NAME),
    ("lock_timeout", "5s"),
    ("statement_timeout", "30min"),
    ("synchronous_commit", "off"),
    # Not R9.1: a chunk's rows (~1.5 kB each) are held by the write statement's CTE and sorted once;
    # the default 4MB spills a 10k-person chunk to temporary files.
    ("work_mem", "64MB"),
)

# Issue 11, fault 4: a connection attempt gives up after connect_timeout, and TCP keepalives find a
# peer that vanished (a dead backend or network) instead of waiting on it forever.
CONNECT_OPTIONS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# Waits between attempts to reopen a lost connection (bounded: then the error stands).
RECONNECT_WAITS = (0.5, 1.0, 2.0, 4.0)

T = TypeVar("T")


def with_reconnect(open_connection: Callable[[], T]) -> T:
    """Open a connection, retrying with bounded backoff while Postgres cannot be reached."""
    for wait in RECONNECT_WAITS:
        try:
            return open_connection()
        except psycopg.OperationalError as exc:
            log.warning("Cannot connect to Postgres (%s); retrying in %.1fs", str(exc).strip(), wait)
            time.sleep(wait)
    return open_connection()


class Control:
    """The autocommit connection of the run ledger and the outbox marks, shared by the threads of a
    run. A lost connection is reopened (bounded backoff) at its next use, and a call that found it lost
    is made once more on the new one, so a lost connection never leaves the ledger behind."""

    def __init__(self, url: str, application_name: str = APPLICATION_NAME):
        self._url = url
        self._application_name = application_name
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> psycopg.Connection:
        return psycopg.connect(
            self._url, autocommit=True, application_name=self._application_name, **CONNECT_OPTIONS
        )

    def get(self) -> psycopg.Connection:
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                if self._conn is not None:
                    self._conn.close()
                    log.warning("The control connection to Postgres was lost; reconnecting")
                self._conn = with_reconnect(self._open)
            return self._conn

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        conn = self.get()
        try:
            return fn(conn, *args, **kwargs)
        except psycopg.OperationalError:
            if not (conn.broken or conn.closed):
                raise
            return fn(self.get(), *args, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


def connect(url: str, *, read_only: bool = False, exact: bool = False) -> psycopg.Connection:
    """The apply connection: transactions committed per batch (never autocommit), R9.1 settings.
    Retried with bounded backoff while Postgres cannot be reached. jsonb columns are decoded through
    orjson where that is exact (`json_loads`); with `exact` every fractional number keeps its text
    (`exact_json_loads`, restore's whole-properties writes)."""
    return with_reconnect(lambda: _connect(url, read_only, exact))


def _connect(url: str, read_only: bool, exact: bool) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=False, **CONNECT_OPTIONS)
    set_json_loads(exact_json_loads if exact else json_loads, conn)
    with conn.cursor() as cur:
        for name, value in SESSION_SETTINGS:
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
        if not read_only:
            cur.execute(CHUNK_DDL)
            cur.execute(STAGE_DDL)
    conn.commit()
    if read_only:
        conn.read_only = True
    return conn


def name_session(conn: psycopg.Connection, application_name: str) -> None:
    """Name a `connect` connection's session other than apply's (restore: R13.3), for its whole life."""
    conn.execute("SELECT set_config('application_name', %s, false)", (application_name,))
    conn.commit()


def connect_reader(url: str, application_name: str, *, exact: bool = False) -> psycopg.Connection:
    """An autocommit connection for reads outside the batches' transactions (restore's backup pages,
    read ahead on a thread of their own); jsonb decoded as `connect` does."""

    def open_connection() -> psycopg.Connection:
        conn = psycopg.connect(url, autocommit=True, application_name=application_name, **CONNECT_OPTIONS)
        set_json_loads(exact_json_loads if exact else json_loads, conn)
        return conn

    return with_reconnect(open_connection)
