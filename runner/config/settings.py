"""Where recon finds its components.

Every setting comes from one environment variable. Targets are explicit: the three production addresses
(`PERSONS_DB_WRITER_URL`, `KAFKA_BOOTSTRAP_SERVERS`, `RECON_CLICKHOUSE_URL`) are given together or not
at all. With none of them, recon uses the local stack: the throwaway Postgres and Kafka that
`runner stack up` wrote into `.recon/stack.json`, and the embedded ClickHouse (chDB). With some but not
all of them, every command exits 2 naming what is missing, so production rows are never published to
the local broker nor diffed against the local engine. Nothing here opens a connection.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runner.config import redact

ENV_PROJECT_DIR = "RECON_PROJECT_DIR"
ENV_STATE_DIR = "RECON_STATE_DIR"
ENV_CHDB_PATH = "RECON_CHDB_PATH"
ENV_CLICKHOUSE_URL = "RECON_CLICKHOUSE_URL"
ENV_PERSONS_DB = "PERSONS_DB_WRITER_URL"
ENV_KAFKA = "KAFKA_BOOTSTRAP_SERVERS"
ENV_TOPIC = "KAFKA_PERSON_TOPIC"
ENV_SOURCE_DB = "RECON_SOURCE_DATABASE"
ENV_TARGET_SCHEMA = "RECON_TARGET_SCHEMA"
ENV_DBT_TARGET = "RECON_DBT_TARGET"

# Given together (production) or not at all (the local stack).
PRODUCTION_VARS = (ENV_PERSONS_DB, ENV_KAFKA, ENV_CLICKHOUSE_URL)

DEFAULT_TOPIC = "clickhouse_person"
DEFAULT_SOURCE_DB = "posthog"
DEFAULT_TARGET_SCHEMA = "recon"


class ConfigError(Exception):
    """Bad configuration or input; commands exit 2 and write nothing."""


def project_dir() -> Path:
    explicit = os.environ.get(ENV_PROJECT_DIR)
    if explicit:
        return Path(explicit).resolve()
    return Path(__file__).resolve().parents[2]


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


@dataclass(frozen=True)
class Targets:
    """The Postgres, Kafka and ClickHouse a command uses, and where they came from."""

    postgres: str | None
    kafka: str | None
    clickhouse: str
    origin: str  # "environment" (production settings) or "local stack"
    postgres_var: str = ENV_PERSONS_DB

    def describe(self) -> str:
        """One line for stderr, passwords masked."""
        dbt_target = os.environ.get(ENV_DBT_TARGET) or "local"
        return (
            f"targets ({self.origin}): postgres {redact.url(self.postgres)}; kafka {redact.url(self.kafka)}; "
            f"clickhouse {redact.url(self.clickhouse)} (dbt target {dbt_target})"
        )


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value and value.strip() else None


def targets(postgres_var: str = ENV_PERSONS_DB) -> Targets:
    """Resolve the targets; ConfigError (exit 2) when production settings are partial or malformed.

    `postgres_var` is the variable holding the Postgres URL (a schedule's `persons_db_env_var`)."""
    required = (postgres_var, ENV_KAFKA, ENV_CLICKHOUSE_URL)
    indicators = dict.fromkeys((*required, ENV_PERSONS_DB))
    given = [name for name in indicators if _env(name)]
    if given:
        missing = [name for name in required if not _env(name)]
        if missing:
            are = ("is", "are")
            raise ConfigError(
                f"production settings are incomplete: {', '.join(given)} {are[len(given) > 1]} set but "
                f"{', '.join(missing)} {are[len(missing) > 1]} not. Set all of "
                f"{', '.join(required)} (production) or none of them (the local stack from `runner stack up` "
                "and the embedded ClickHouse); recon never mixes the two"
            )
        found = Targets(
            postgres=_check_postgres_url(postgres_var, _env(postgres_var) or ""),
            kafka=_check_kafka(_env(ENV_KAFKA) or ""),
            clickhouse=_check_clickhouse_url(_env(ENV_CLICKHOUSE_URL) or ""),
            origin="environment",
            postgres_var=postgres_var,
        )
    else:
        stack = read_stack()
        found = Targets(
            postgres=stack.get("postgres", {}).get("url"),
            kafka=stack.get("kafka", {}).get("bootstrap_servers"),
            clickhouse=f"chdb://{chdb_path()}",
            origin="local stack",
            postgres_var=postgres_var,
        )
    _check_dbt_target(found.clickhouse)
    return found


def _check_postgres_url(name: str, url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except Exception as exc:  # psycopg.ProgrammingError; its text quotes the URL, password included
        raise ConfigError(f"{name} is not a valid Postgres URL ({redact.text(str(exc).strip())})") from None
    return url


def _check_kafka(servers: str) -> str:
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{ENV_KAFKA} must be host:port[,host:port...], got {redact.text(servers)!r}")
    return servers


def _check_clickhouse_url(url: str) -> str:
    if url.startswith("chdb://"):
        return url
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise ConfigError(f"{ENV_CLICKHOUSE_URL} is not a valid URL ({exc}): {redact.url(url)}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{ENV_CLICKHOUSE_URL} must be chdb:///path or http(s)://user:password@host:port/database, "
            f"got {redact.url(url)}"
        )
    return url


def _check_dbt_target(clickhouse: str) -> None:
    """dbt must build the diff where the runner reads it."""
    dbt_target = os.environ.get(ENV_DBT_TARGET) or "local"
    embedded = clickhouse.startswith("chdb://")
    if not embedded and dbt_target == "local":
        raise ConfigError(
            f"{ENV_CLICKHOUSE_URL} is a ClickHouse server but {ENV_DBT_TARGET} is 'local' (dbt would build "
            f"the diff in the embedded engine): set {ENV_DBT_TARGET}=prod and the CLICKHOUSE_* variables"
        )
    if embedded and dbt_target == "prod":
        raise ConfigError(
            f"{ENV_DBT_TARGET} is 'prod' but the runner's ClickHouse is the embedded engine "
            f"({redact.url(clickhouse)}): set {ENV_CLICKHOUSE_URL} to the server dbt builds on"
        )


def clickhouse_url() -> str:
    """DSN for clickhouse-connect: `chdb:///abs/path` (local) or `http(s)://user:pass@host:port/db`."""
    return targets().clickhouse


def persons_db_url(required: bool = True) -> str | None:
    url = targets().postgres
    if not url and required:
        raise ConfigError(
            f"{ENV_PERSONS_DB} is not set and no local stack is running (start one with `runner stack up`)"
        )
    return url


def kafka_bootstrap(required: bool = True) -> str | None:
    servers = targets().kafka
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
        found = targets()
        return cls(
            clickhouse_url=found.clickhouse,
            persons_db_url=found.postgres,
            kafka_bootstrap=found.kafka,
            person_topic=person_topic(),
            source_database=source_database(),
            target_schema=target_schema(),
        )
