"""Local-only commands refuse production servers: `runner warehouse init` and `sync-persons` write
into ClickHouse, so given production targets off this machine they exit 2 before connecting."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.config import settings
from runner.local import guard

REMOTE = {
    settings.ENV_PERSONS_DB: "postgresql://recon:secret@db.example.com:5432/posthog",
    settings.ENV_KAFKA: "kafka.example.com:9092",
    settings.ENV_CLICKHOUSE_URL: "https://recon:secret@ch.example.com:8443/posthog",
    settings.ENV_DBT_TARGET: "prod",
}


@pytest.mark.parametrize(
    ("command", "what"),
    [
        (["warehouse", "sync-persons", "--timeout", "1"], "ingest the person topic"),
        (["warehouse", "init"], "create PostHog's tables"),
    ],
)
def test_warehouse_commands_refuse_a_remote_clickhouse(monkeypatch, command, what) -> None:
    for name, value in REMOTE.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert f"refusing to {what} on the ClickHouse server at 'ch.example.com'" in result.output
    assert "--allow-remote" in result.output
    assert "secret" not in result.output


def test_loopback_and_embedded_are_local() -> None:
    guard.refuse_remote_clickhouse("chdb:///tmp/recon/clickhouse", "x")
    guard.refuse_remote_clickhouse("http://localhost:8123", "x")
    guard.refuse_remote_clickhouse("http://127.0.0.1:8123/posthog", "x")
    guard.refuse_remote_postgres("host=/var/run/postgresql dbname=posthog", "x")
    guard.refuse_remote_postgres("postgresql://u@127.0.0.1:5432/posthog", "x")
    with pytest.raises(settings.ConfigError, match="Postgres server at 'a.example.com,127.0.0.1'"):
        guard.refuse_remote_postgres("host=a.example.com,127.0.0.1 dbname=posthog", "x")
