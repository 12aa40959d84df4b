"""Where recon finds its components.

Every setting comes from one environment variable; the local stack (`runner stack up`) writes the
addresses of the throwaway Postgres and Kafka into `.recon/stack.json`, which is the fallback when the
variables are unset. Nothing here opens a connection.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

ENV_PROJECT_DIR = "RECON_PROJECT_DIR"
ENV_STATE_DIR = "RECON_STATE_DIR"
ENV_CHDB_PATH = "RECON_CHDB_PATH"
ENV_CLICKHOUSE_URL = "RECON_CLICKHOUSE_URL"
ENV_PERSONS_DB = "PERSONS_DB_WRITER_URL"
ENV_KAFKA = "KAFKA_BOOTSTRAP_SERVERS"
ENV_TOPIC = "KAFKA_PERSON_TOPIC"
ENV_SOURCE_DB = "RECON_SOURCE_DATABASE"
ENV_TARGET_SCHEMA = "RECON_TARGET_SCHEMA"

DEFAULT_TOPIC = "clickhouse_person"
DEFAULT_SOURCE_DB = "posthog"
DEFAULT_TARGET_SCHEMA = "recon"


class ConfigError(Exception):
    """Bad configuration or input; commands exit 2 and write nothing."""


def project_dir() -> Path:
    explicit = os.environ.get(ENV_PROJECT_DIR)
    if explicit:
        return Path(explicit).resolve()
    return Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    explicit = os.environ.get(ENV_STATE_DIR)
    return Path(explicit).resolve() if explicit else project_dir() / ".recon"


def stack_file() -> Path:
    return state_dir() / "stack.json"


def read_stack() -> dict:
    path = stack_file()
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def chdb_path() -> Path:
    explicit = os.environ.get(ENV_CHDB_PATH)
    return Path(explicit).resolve() if explicit else project_dir() / ".recon" / "clickhouse"


def clickhouse_url() -> str:
    """DSN for clickhouse-connect: `chdb:///abs/path` (default) or `http(s)://user:pass@host:port/db`."""
    explicit = os.environ.get(ENV_CLICKHOUSE_URL)
    if explicit:
        return explicit
    return f"chdb://{chdb_path()}"


def persons_db_url(required: bool = True) -> str | None:
    url = os.environ.get(ENV_PERSONS_DB) or read_stack().get("postgres", {}).get("url")
    if not url and required:
        raise ConfigError(
            f"{ENV_PERSONS_DB} is not set and no local stack is running (start one with `runner stack up`)"
        )
    return url


def kafka_bootstrap(required: bool = True) -> str | None:
    servers = os.environ.get(ENV_KAFKA) or read_stack().get("kafka", {}).get("bootstrap_servers")
    if not servers and required:
        raise ConfigError(
            f"{ENV_KAFKA} is not set and no local stack is running (start one with `runner stack up`)"
        )
    return servers


def person_topic() -> str:
    return os.environ.get(ENV_TOPIC) or DEFAULT_TOPIC


def source_database() -> str:
    return os.environ.get(ENV_SOURCE_DB) or DEFAULT_SOURCE_DB


def target_schema() -> str:
    return os.environ.get(ENV_TARGET_SCHEMA) or DEFAULT_TARGET_SCHEMA


@dataclass(frozen=True)
class Settings:
    clickhouse_url: str
    persons_db_url: str | None
    kafka_bootstrap: str | None
    person_topic: str
    source_database: str
    target_schema: str

    @classmethod
    def load(cls) -> Settings:
        return cls(
            clickhouse_url=clickhouse_url(),
            persons_db_url=persons_db_url(required=False),
            kafka_bootstrap=kafka_bootstrap(required=False),
            person_topic=person_topic(),
            source_database=source_database(),
            target_schema=target_schema(),
        )
