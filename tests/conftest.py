"""Shared fixtures.

The whole session uses one state directory and one embedded ClickHouse path (chDB allows one engine
path per process), set before anything opens the engine. Subprocesses that need their own engine
must use another path (see `fresh_chdb_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SESSION_STATE: Path | None = None


@pytest.fixture(scope="session", autouse=True)
def recon_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    state = tmp_path_factory.mktemp("recon-state")
    env = {
        "RECON_STATE_DIR": str(state),
        "RECON_CHDB_PATH": str(state / "clickhouse"),
    }
    for key in ("RECON_CLICKHOUSE_URL", "PERSONS_DB_WRITER_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        os.environ.pop(key, None)
    os.environ.update(env)
    return env


@pytest.fixture
def fresh_chdb_path(tmp_path: Path) -> Path:
    """An engine path no test in this process has opened: for subprocesses that need chDB."""
    return tmp_path / "clickhouse"
