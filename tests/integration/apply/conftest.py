"""Fixtures of the `runner apply` tests: clean ClickHouse tables (session engine), clean Postgres, and a
Kafka topic of their own per test (Tansu keeps every topic in memory for the whole session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apply_support import reset_tables
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, NewTopic

from runner.cli import main
from runner.config import faults, settings

PROJECT = Path(__file__).resolve().parents[3]


@pytest.fixture
def ch(recon_env: dict[str, str]) -> Any:
    from runner.stores import warehouse

    client = warehouse.client()
    reset_tables(client)
    return client


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    for future in admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=10).values():
        future.result()
    for _ in range(50):
        if name in admin.list_topics(name, timeout=2).topics:
            return
    raise RuntimeError(f"topic {name} did not appear")


@pytest.fixture
def topic(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"clickhouse_person_{uuid.uuid4().hex[:12]}"
    create_topic(kafka_bootstrap, name)
    monkeypatch.setenv(settings.ENV_TOPIC, name)
    return name


@pytest.fixture
def env(ch: Any, clean_pg: psycopg.Connection, topic: str) -> dict[str, Any]:
    """Everything a test of apply needs, all empty: ClickHouse tables, Postgres tables, a new topic."""
    faults.reset()
    return {"ch": ch, "pg": clean_pg, "topic": topic}


@dataclass
class ApplyRun:
    exit_code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    def summary(self) -> dict[str, Any]:
        lines = self.json_lines()
        assert lines[-1]["type"] == "summary"
        return lines[-1]

    def persons(self) -> dict[str, dict[str, Any]]:
        return {line["person_uuid"]: line for line in self.json_lines() if line["type"] == "person"}


@pytest.fixture
def run_apply() -> Callable[..., ApplyRun]:
    """`runner apply ARGS` in this process (it shares the session's chDB engine)."""

    def run(*args: str) -> ApplyRun:
        faults.reset()
        result = CliRunner().invoke(main, ["apply", *args], catch_exceptions=False)
        return ApplyRun(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def subprocess_env(fresh_chdb_path: Path, topic: str, pg_url: str, kafka_bootstrap: str) -> dict[str, str]:
    """Environment for `runner` subprocesses: their own chDB path, the session's Postgres and Kafka."""
    env = dict(os.environ)
    env.update(
        {
            settings.ENV_CHDB_PATH: str(fresh_chdb_path),
            settings.ENV_PERSONS_DB: pg_url,
            settings.ENV_KAFKA: kafka_bootstrap,
            settings.ENV_CLICKHOUSE_URL: f"chdb://{fresh_chdb_path}",
            settings.ENV_TOPIC: topic,
            "PYTHONPATH": str(PROJECT),
        }
    )
    env.pop(faults.ENV_FAULT, None)
    return env


def run_subprocess(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from runner.cli import main; main()", *args],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def seed_subprocess(seed_json: Path, env: dict[str, str]) -> None:
    """Fill the subprocess engine path with a seed file (see apply_support.seed_file)."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("apply_support.py")), str(seed_json)],
        env=env,
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture
def pg_rows(pg_url: str) -> Callable[..., list[tuple]]:
    def query(sql: str, params: Any = None) -> list[tuple]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    return query


@pytest.fixture(autouse=True)
def _no_fault_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(faults.ENV_FAULT, raising=False)
    yield


@pytest.fixture(autouse=True)
def _drop_test_triggers(pg_url: str) -> Iterator[None]:
    """Triggers a test put on posthog_person (to fail or race a write) never outlive it."""
    yield
    with psycopg.connect(pg_url, autocommit=True) as conn:
        names = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'posthog_person'::regclass AND NOT tgisinternal"
        ).fetchall()
        for (name,) in names:
            conn.execute(f'DROP TRIGGER "{name}" ON posthog_person')
