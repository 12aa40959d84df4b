"""`runner stack`: a throwaway Postgres and Tansu broker, idempotent, leaving nothing behind."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka_util import read_topic, read_topic_json

from runner.cli import main
from runner.config import settings
from runner.local import stack as local_stack
from runner.local.stack import postgres as stack_postgres
from runner.local.stack import processes


def _processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and local_stack.pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.integration
def test_up_twice_is_one_stack(stack):
    again = local_stack.up()
    assert again == stack
    assert again["postgres"]["pid"] == stack["postgres"]["pid"]
    assert again["kafka"]["pid"] == stack["kafka"]["pid"]
    result = CliRunner().invoke(main, ["stack", "up"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("already running")
    assert stack["postgres"]["url"] in result.output


@pytest.mark.integration
def test_stack_listens_on_loopback_only(stack):
    assert stack["postgres"]["url"].startswith("postgresql://postgres@127.0.0.1:")
    assert stack["kafka"]["bootstrap_servers"] == f"127.0.0.1:{stack['kafka']['port']}"
    with psycopg.connect(stack["postgres"]["url"]) as conn:
        listen = conn.execute("SHOW listen_addresses").fetchone()
        fsync = conn.execute("SHOW fsync").fetchone()
        database = conn.execute("SELECT current_database()").fetchone()
    assert listen == ("127.0.0.1",)
    assert fsync == ("off",)
    assert database == ("posthog",)


@pytest.mark.integration
def test_status_and_env(stack):
    info = local_stack.status()
    assert info["running"] is True
    assert info["postgres"] == {
        "running": True,
        "url": stack["postgres"]["url"],
        "port": stack["postgres"]["port"],
        "pid": stack["postgres"]["pid"],
        "data_dir": stack["postgres"]["data_dir"],
    }
    assert info["kafka"]["running"] is True
    assert info["kafka"]["bootstrap_servers"] == stack["kafka"]["bootstrap_servers"]

    runner = CliRunner()
    as_json = runner.invoke(main, ["stack", "status", "--output", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == info

    as_text = runner.invoke(main, ["stack", "status"])
    assert as_text.exit_code == 0
    assert f"postgres: running  {stack['postgres']['url']}" in as_text.output
    assert f"kafka: running  {stack['kafka']['bootstrap_servers']}" in as_text.output

    env = runner.invoke(main, ["stack", "env"])
    assert env.exit_code == 0
    assert env.output.splitlines() == [
        f"export PERSONS_DB_WRITER_URL={stack['postgres']['url']}",
        f"export KAFKA_BOOTSTRAP_SERVERS={stack['kafka']['bootstrap_servers']}",
        f"export RECON_CLICKHOUSE_URL=chdb://{settings.chdb_path()}",
    ]


@pytest.mark.integration
def test_settings_fall_back_to_stack_json(stack, monkeypatch):
    monkeypatch.delenv(settings.ENV_PERSONS_DB, raising=False)
    monkeypatch.delenv(settings.ENV_KAFKA, raising=False)
    assert settings.stack_file() == Path(os.environ["RECON_STATE_DIR"]) / "stack.json"
    assert settings.persons_db_url() == stack["postgres"]["url"]
    assert settings.kafka_bootstrap() == stack["kafka"]["bootstrap_servers"]


@pytest.mark.integration
def test_person_topic_exists_with_partitions(stack, kafka_bootstrap):
    metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
    topic = metadata.topics[settings.person_topic()]
    assert len(topic.partitions) == local_stack.TOPIC_PARTITIONS


@pytest.mark.integration
def test_kafka_round_trip(kafka_bootstrap):
    topic = f"roundtrip_{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for future in admin.create_topics([NewTopic(topic, 3, 1)]).values():
        future.result(timeout=10)

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    delivered = []
    sent = {f"person-{i}": {"i": i, "team_id": i % 4} for i in range(40)}
    for key, value in sent.items():
        producer.produce(
            topic, key=key, value=json.dumps(value), on_delivery=lambda err, _m: delivered.append(err)
        )
    assert producer.flush(10) == 0
    assert delivered == [None] * len(sent)

    messages = read_topic(kafka_bootstrap, topic)
    assert len(messages) == len(sent)
    assert {m.partition() for m in messages} <= {0, 1, 2}
    assert dict(read_topic_json(kafka_bootstrap, topic)) == sent
    # Same key, same partition: the order of one person's messages is kept.
    by_key = {m.key(): m.partition() for m in messages}
    assert len(by_key) == len(sent)


@pytest.mark.integration
def test_read_topic_of_missing_topic_is_empty(kafka_bootstrap):
    assert read_topic(kafka_bootstrap, f"missing_{uuid.uuid4().hex[:8]}", timeout=5) == []


@pytest.mark.integration
def test_own_stack_lifecycle(tmp_path, stack):
    """A second stack in its own state dir: up is idempotent, a stale one restarts, down leaves nothing."""
    state = tmp_path / "state"
    try:
        _lifecycle(state, stack)
    finally:
        local_stack.down(state, purge=True)


def _lifecycle(state: Path, stack: dict) -> None:
    first = local_stack.up(state)
    assert first["postgres"]["port"] != stack["postgres"]["port"]
    assert local_stack.up(state) == first

    data_dir = first["postgres"]["data_dir"]
    with psycopg.connect(first["postgres"]["url"], autocommit=True) as conn:
        conn.execute("INSERT INTO recon_run (job_id, kind) VALUES ('kept', 'test')")

    # The broker dies: the stack is stale; `up` cleans it and starts again (Postgres data kept).
    os.kill(first["kafka"]["pid"], 9)
    assert processes.wait(lambda: not local_stack.status(state)["kafka"]["running"], 10)
    second = local_stack.up(state)
    assert second["kafka"]["pid"] != first["kafka"]["pid"]
    assert not local_stack.pid_alive(first["postgres"]["pid"])
    assert local_stack.status(state)["running"] is True
    with psycopg.connect(second["postgres"]["url"]) as conn:
        assert conn.execute("SELECT job_id FROM recon_run").fetchall() == [("kept",)]

    stopped = local_stack.down(state)
    assert stopped == {"postgres": True, "kafka": True}
    assert not (state / "stack.json").exists()
    for part in ("postgres", "kafka"):
        assert not local_stack.pid_alive(second[part]["pid"])
        assert not local_stack.port_open(second[part]["port"])
    listening = _listening_ports()
    assert second["postgres"]["port"] not in listening
    assert second["kafka"]["port"] not in listening
    assert _processes_mentioning(data_dir) == []
    assert _processes_mentioning(f"127.0.0.1:{second['kafka']['port']}") == []
    assert local_stack.status(state)["running"] is False
    assert local_stack.down(state) == {"postgres": False, "kafka": False}

    # Data survives `down`; `--purge` removes it.
    assert Path(data_dir, "PG_VERSION").exists()
    result = CliRunner().invoke(main, ["stack", "down", "--purge", "--state-dir", str(state)])
    assert result.exit_code == 0, result.output
    assert not Path(data_dir).exists()
    # The session's stack was never touched.
    assert local_stack.status()["running"] is True


@pytest.mark.integration
def test_stale_stack_json_is_replaced(tmp_path, stack):
    """Dead pids in stack.json: `up` starts afresh and leaves alone whoever now holds the old ports."""
    state = tmp_path / "stale"
    state.mkdir()
    taken_pg, taken_kafka = stack["postgres"]["port"], stack["kafka"]["port"]
    stale = {
        "postgres": {
            "url": f"postgresql://postgres@127.0.0.1:{taken_pg}/posthog",
            "port": taken_pg,
            "pid": 999_999_999,
            "data_dir": str(tmp_path / "nowhere"),
        },
        "kafka": {"bootstrap_servers": f"127.0.0.1:{taken_kafka}", "port": taken_kafka, "pid": 999_999_999},
    }
    (state / "stack.json").write_text(json.dumps(stale))
    status = CliRunner().invoke(main, ["stack", "status", "--state-dir", str(state)])
    assert status.exit_code == 1
    assert "postgres: stopped" in status.output
    try:
        info = local_stack.up(state)
        assert info["postgres"]["port"] != taken_pg
        assert info["kafka"]["pid"] != stale["kafka"]["pid"]
        assert local_stack.status(state)["running"] is True
    finally:
        local_stack.down(state, purge=True)
    assert local_stack.status(state)["running"] is False
    assert local_stack.status()["running"] is True


def test_env_without_stack_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["stack", "env", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "runner stack up" in result.output


def test_missing_postgres_binaries_name_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv("RECON_PG_BINDIR", raising=False)
    monkeypatch.setattr(stack_postgres.shutil, "which", lambda _name: None)
    monkeypatch.setattr(stack_postgres.glob, "glob", lambda _pattern: [])
    with pytest.raises(stack_postgres.PostgresNotInstalled) as raised:
        stack_postgres.find_pg_bindir()
    message = str(raised.value)
    assert "postgresql" in message and "apt-get install" in message and "postgresql-15" in message

    result = CliRunner().invoke(main, ["stack", "up", "--state-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "apt-get install -y postgresql" in result.output
