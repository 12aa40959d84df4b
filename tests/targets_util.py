"""Production-style targets for tests: recon takes all three addresses from the environment or none."""

from __future__ import annotations

import os

import pytest

from runner.config import settings


def use_targets(
    monkeypatch: pytest.MonkeyPatch, *, postgres: str, kafka: str, clickhouse: str | None = None
) -> None:
    """Set the three production variables; ClickHouse defaults to the session's embedded engine."""
    monkeypatch.setenv(settings.ENV_PERSONS_DB, postgres)
    monkeypatch.setenv(settings.ENV_KAFKA, kafka)
    monkeypatch.setenv(
        settings.ENV_CLICKHOUSE_URL, clickhouse or f"chdb://{os.environ[settings.ENV_CHDB_PATH]}"
    )
