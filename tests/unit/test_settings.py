"""`runner.settings`: environment first, then the local stack's stack.json, then defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import settings

STACK = {
    "postgres": {"url": "postgresql://postgres@127.0.0.1:5999/posthog", "port": 5999},
    "kafka": {"bootstrap_servers": "127.0.0.1:9999", "port": 9999},
}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty state dir of its own (not the session's, whose stack may be running)."""
    monkeypatch.setenv(settings.ENV_STATE_DIR, str(tmp_path))
    for name in (
        settings.ENV_PERSONS_DB,
        settings.ENV_KAFKA,
        settings.ENV_TOPIC,
        settings.ENV_SOURCE_DB,
        settings.ENV_TARGET_SCHEMA,
        settings.ENV_CLICKHOUSE_URL,
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_falls_back_to_stack_json(state: Path) -> None:
    (state / "stack.json").write_text(json.dumps(STACK))
    assert settings.stack_file() == state / "stack.json"
    assert settings.persons_db_url() == STACK["postgres"]["url"]
    assert settings.kafka_bootstrap() == STACK["kafka"]["bootstrap_servers"]
    loaded = settings.Settings.load()
    assert loaded.persons_db_url == STACK["postgres"]["url"]
    assert loaded.kafka_bootstrap == STACK["kafka"]["bootstrap_servers"]


def test_environment_wins_over_stack_json(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (state / "stack.json").write_text(json.dumps(STACK))
    monkeypatch.setenv(settings.ENV_PERSONS_DB, "postgresql://prod-writer@db:5432/posthog")
    monkeypatch.setenv(settings.ENV_KAFKA, "kafka-1:9092,kafka-2:9092")
    assert settings.persons_db_url() == "postgresql://prod-writer@db:5432/posthog"
    assert settings.kafka_bootstrap() == "kafka-1:9092,kafka-2:9092"


@pytest.mark.parametrize("content", [None, "{not json", "{}"])
def test_no_stack_and_no_environment(state: Path, content: str | None) -> None:
    if content is not None:
        (state / "stack.json").write_text(content)
    with pytest.raises(settings.ConfigError, match="runner stack up"):
        settings.persons_db_url()
    with pytest.raises(settings.ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        settings.kafka_bootstrap()
    assert settings.persons_db_url(required=False) is None
    assert settings.kafka_bootstrap(required=False) is None


def test_defaults(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_CHDB_PATH, str(state / "ch"))
    assert settings.person_topic() == "clickhouse_person"
    assert settings.source_database() == "posthog"
    assert settings.target_schema() == "recon"
    assert settings.clickhouse_url() == f"chdb://{state / 'ch'}"


def test_explicit_values(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_TOPIC, "person_test")
    monkeypatch.setenv(settings.ENV_SOURCE_DB, "posthog_prod")
    monkeypatch.setenv(settings.ENV_TARGET_SCHEMA, "recon_dev")
    monkeypatch.setenv(settings.ENV_CLICKHOUSE_URL, "https://u:p@ch.example:8443/default")
    loaded = settings.Settings.load()
    assert loaded.person_topic == "person_test"
    assert loaded.source_database == "posthog_prod"
    assert loaded.target_schema == "recon_dev"
    assert loaded.clickhouse_url == "https://u:p@ch.example:8443/default"


def test_state_dir_defaults_to_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(settings.ENV_STATE_DIR, raising=False)
    monkeypatch.setenv(settings.ENV_PROJECT_DIR, str(tmp_path))
    assert settings.state_dir() == tmp_path / ".recon"
    assert settings.stack_file() == tmp_path / ".recon" / "stack.json"
