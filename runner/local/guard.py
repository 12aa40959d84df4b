"""Local-only commands never write to a shared server by accident: they refuse a ClickHouse or Postgres
that is not the embedded engine or on this machine, unless told `--allow-remote`."""

from __future__ import annotations

from urllib.parse import urlsplit

from runner.config import settings


def is_loopback(host: str | None) -> bool:
    return not host or host.startswith("/") or host in ("localhost", "::1") or host.startswith("127.")


def refuse_remote_clickhouse(url: str, what: str) -> None:
    """ConfigError (exit 2, nothing written) when `url` is a ClickHouse server off this machine."""
    if url.startswith("chdb://"):
        return
    host = urlsplit(url).hostname
    if not is_loopback(host):
        raise settings.ConfigError(
            f"refusing to {what} on the ClickHouse server at {host!r}: this command is for the embedded "
            "engine or a local server (pass --allow-remote to override)"
        )


def refuse_remote_postgres(url: str, what: str) -> None:
    """ConfigError (exit 2, nothing written) when `url` names a Postgres host off this machine."""
    from psycopg.conninfo import conninfo_to_dict

    hosts = str(conninfo_to_dict(url).get("host") or "").split(",")
    if not all(is_loopback(h.strip()) for h in hosts):
        raise settings.ConfigError(
            f"refusing to {what} on the Postgres server at {','.join(hosts)!r}: this command is for a "
            "local persons database (pass --allow-remote to override)"
        )
