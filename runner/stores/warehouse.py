"""ClickHouse access: one client factory and identifier checking.

PostHog's source tables (local only) are created by `runner.local.sources`.

The same code talks to the embedded engine (`chdb:///path`) and to a server (`http(s)://...`).
chDB allows one engine path per process, so the client is cached per process.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from runner.config import redact, settings

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
    try:
        if is_embedded(url):
            return clickhouse_connect.get_client(dsn=url)
        # No session: the reader and the writer threads' prefetches query at once through this client,
        # and a server refuses concurrent queries in one session (nothing here needs session state).
        return clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
    except Exception as exc:  # unreachable server, bad credentials: the command cannot start (exit 2)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise settings.ConfigError(
            f"cannot connect to ClickHouse ({settings.ENV_CLICKHOUSE_URL} {redact.url(url)}): "
            + redact.text(first)
        ) from exc


def client(url: str | None = None) -> Client:
    return _client_for(url or settings.clickhouse_url())


def is_embedded(url: str | None = None) -> bool:
    return (url or settings.clickhouse_url()).startswith("chdb://")


def query_rows(sql: str, parameters: dict[str, Any] | None = None, cli: Client | None = None) -> list[tuple]:
    return [tuple(row) for row in (cli or client()).query(sql, parameters=parameters).result_rows]
