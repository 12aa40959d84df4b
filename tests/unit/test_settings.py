"""`runner.config.settings`: production settings all together or none (then the local stack's
stack.json and the embedded ClickHouse); malformed or partial settings are configuration errors with
passwords masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.config import settings

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
        settings.ENV_DBT_TARGET,
        "RECON_PERSONS_DB_ALT",
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
    monkeypatch.setenv(settings.ENV_CLICKHOUSE_URL, "chdb:///tmp/ch")
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
    monkeypatch.setenv(settings.ENV_PERSONS_DB, "postgresql://w@db/posthog")
    monkeypatch.setenv(settings.ENV_KAFKA, "k:9092")
    monkeypatch.setenv(settings.ENV_DBT_TARGET, "prod")
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


PRODUCTION = {
    settings.ENV_PERSONS_DB: "postgresql://writer:S3CRET@db.example:5432/posthog",
    settings.ENV_KAFKA: "kafka-1:9092",
    settings.ENV_CLICKHOUSE_URL: "https://default:CHPASS@ch.example:8443/default",
}


@pytest.mark.parametrize(
    "given",
    [[name] for name in PRODUCTION] + [[a, b] for a in PRODUCTION for b in PRODUCTION if a < b],
)
def test_partial_production_settings_name_what_is_missing(
    state: Path, monkeypatch: pytest.MonkeyPatch, given: list[str]
) -> None:
    """Issue 13 point 1: one production address never pulls the others from the local stack."""
    (state / "stack.json").write_text(json.dumps(STACK))
    monkeypatch.setenv(settings.ENV_DBT_TARGET, "prod")
    for name in given:
        monkeypatch.setenv(name, PRODUCTION[name])
    missing = [name for name in PRODUCTION if name not in given]
    for resolve in (
        settings.targets,
        settings.persons_db_url,
        settings.kafka_bootstrap,
        settings.clickhouse_url,
    ):
        with pytest.raises(settings.ConfigError) as err:
            resolve()
        message = str(err.value)
        assert all(name in message for name in missing), message
        assert "S3CRET" not in message and "CHPASS" not in message


def test_full_production_settings_never_touch_the_stack(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (state / "stack.json").write_text(json.dumps(STACK))
    monkeypatch.setenv(settings.ENV_DBT_TARGET, "prod")
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    found = settings.targets()
    assert (found.postgres, found.kafka, found.clickhouse) == tuple(PRODUCTION.values())
    line = found.describe()
    assert "S3CRET" not in line and "CHPASS" not in line
    assert "postgresql://writer:***@db.example:5432/posthog" in line
    assert "kafka-1:9092" in line and "https://default:***@ch.example:8443/default" in line


def test_local_targets_described(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (state / "stack.json").write_text(json.dumps(STACK))
    monkeypatch.setenv(settings.ENV_CHDB_PATH, str(state / "ch"))
    line = settings.targets().describe()
    assert line.startswith("targets (local stack)")
    assert STACK["postgres"]["url"] in line and f"chdb://{state / 'ch'}" in line


def test_schedule_postgres_variable_counts_as_production(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (state / "stack.json").write_text(json.dumps(STACK))
    monkeypatch.setenv("RECON_PERSONS_DB_ALT", "postgresql://alt@db/posthog")
    with pytest.raises(settings.ConfigError, match="KAFKA_BOOTSTRAP_SERVERS, RECON_CLICKHOUSE_URL"):
        settings.targets("RECON_PERSONS_DB_ALT")


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (settings.ENV_PERSONS_DB, "postgresql://bob:S3CRET@[::1/db", "not a valid Postgres URL"),
        (settings.ENV_CLICKHOUSE_URL, "https://bob:S3CRET@[::1/db", "not a valid URL"),
        (settings.ENV_CLICKHOUSE_URL, "https://bob:S3CRET@ch:port/db", "not a valid URL"),
        (settings.ENV_CLICKHOUSE_URL, "ftp://bob:S3CRET@ch/db", "must be chdb:///path or http"),
        (settings.ENV_KAFKA, "kafka-1", "host:port"),
    ],
)
def test_malformed_addresses_are_config_errors_without_the_password(
    state: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(settings.ENV_DBT_TARGET, "prod")
    for other, good in PRODUCTION.items():
        monkeypatch.setenv(other, good)
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.ConfigError) as err:
        settings.targets()
    assert problem in str(err.value) and name in str(err.value)
    assert "S3CRET" not in str(err.value)


def test_dbt_target_must_match_the_runner_clickhouse(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PRODUCTION.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(settings.ConfigError, match="RECON_DBT_TARGET=prod"):
        settings.targets()
    monkeypatch.setenv(settings.ENV_CLICKHOUSE_URL, "chdb:///tmp/ch")
    monkeypatch.setenv(settings.ENV_DBT_TARGET, "prod")
    with pytest.raises(settings.ConfigError, match="embedded engine"):
        settings.targets()
