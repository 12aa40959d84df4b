"""Crash safety: `runner apply` killed at several points (a real process exit, no cleanup), then re-run
with the same job id, converges to exactly the state of an uninterrupted run; and a broker outage
during apply leaves Postgres committed with the messages in the outbox, published by the next run.

These run apply as subprocesses, with their own chDB engine path (chDB allows one process per path).
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from apply_support import TS, Diff, insert_pg_person, new_uuid, seed_file
from conftest import create_topic, run_subprocess, seed_subprocess
from kafka_util import read_topic

from runner.config import faults, settings
from runner.local.stack import find_tansu

pytestmark = pytest.mark.integration

TEAM1 = [new_uuid(100 + i) for i in range(7)]
TEAM2 = [new_uuid(200 + i) for i in range(3)]
BASE = {"plan": "free", "legacy": "x"}


def seed(tmp_path: Path, env: dict[str, str], pg_url: str) -> None:
    """Team 1: 7 persons in 4 batches of 2 (one moved on in Postgres: three-way merge; one missing in
    Postgres); team 2: 3 persons in 2 batches."""
    diffs = [Diff(1, u, 3, set={"plan": ('"paid"', TS)}, unset={"legacy": TS}) for u in TEAM1]
    diffs += [Diff(2, u, 3, set_once={"source": ('"ads"', TS)}) for u in TEAM2]
    ch_persons = [(1, u, BASE, 3) for u in TEAM1] + [(2, u, BASE, 3) for u in TEAM2]
    ch_persons.append((1, TEAM1[2], {**BASE, "legacy": "y"}, 4))
    seed_json = tmp_path / "seed.json"
    seed_file(seed_json, diffs, {1: 7, 2: 3, 3: 0}, ch_persons)
    seed_subprocess(seed_json, env)
    reset_pg(pg_url)


def reset_pg(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE posthog_person, posthog_person_reconciliation_backup, recon_outbox, "
            "recon_outbox_batch, recon_run_team, recon_run RESTART IDENTITY"
        )
        for u in TEAM1 + TEAM2:
            if u == TEAM1[5]:
                continue  # not_found
            insert_pg_person(
                conn,
                1 if u in TEAM1 else 2,
                u,
                {**BASE, "legacy": "y"} if u == TEAM1[2] else BASE,
                4 if u == TEAM1[2] else 3,
            )


def snapshot(pg_url: str) -> dict[str, Any]:
    with psycopg.connect(pg_url, autocommit=True) as conn:

        def q(sql: str) -> list[tuple]:
            return conn.execute(sql).fetchall()

        return {
            "persons": q(
                "SELECT uuid, properties, properties_last_updated_at, properties_last_operation, version "
                "FROM posthog_person ORDER BY uuid"
            ),
            "backups": q(
                "SELECT uuid, team_id, person_id, properties, properties_last_updated_at, "
                "properties_last_operation, version, is_identified, created_at, is_user_id, "
                "pending_operations, properties_after, properties_last_updated_at_after, "
                "properties_last_operation_after, version_after "
                "FROM posthog_person_reconciliation_backup ORDER BY uuid"
            ),
            "outbox": q(
                "SELECT person_uuid, team_id, version, payload, published_at IS NOT NULL "
                "FROM recon_outbox_status ORDER BY person_uuid"
            ),
            "ledger": q(
                "SELECT team_id, status, processed, updated, skipped, outcomes - 'already_applied' "
                "FROM recon_run_team ORDER BY team_id"
            ),
            "run": q("SELECT status FROM recon_run"),
        }


def messages(bootstrap: str, topic: str) -> set[tuple[str, str]]:
    return {(m.key().decode(), m.value().decode()) for m in read_topic(bootstrap, topic)}


APPLY = ["apply", "--batch-size", "2", "--job-id", "job-crash", "--output", "json"]


@pytest.fixture
def reference(tmp_path, subprocess_env, pg_url, kafka_bootstrap) -> dict[str, Any]:
    """The state after an uninterrupted run (published to a topic of its own)."""
    seed(tmp_path, subprocess_env, pg_url)
    topic = subprocess_env[settings.ENV_TOPIC] + "_ref"
    create_topic(kafka_bootstrap, topic)
    done = run_subprocess(APPLY, {**subprocess_env, settings.ENV_TOPIC: topic})
    assert done.returncode == 0, done.stderr
    state = snapshot(pg_url)
    assert len(state["outbox"]) == 9 and all(row[4] for row in state["outbox"])
    state["messages"] = messages(kafka_bootstrap, topic)
    assert len(state["messages"]) == 9
    reset_pg(pg_url)
    return state


@pytest.mark.parametrize(
    "fault",
    [
        "after_batch:1",  # between batches
        "after_commit:2",  # committed, nothing published
        "before_commit:3",  # written, not committed
        "mid_publish:3",  # second batch half produced
        "after_commit:5",  # first batch of the second team
    ],
)
def test_killed_run_converges_on_rerun(reference, subprocess_env, pg_url, kafka_bootstrap, fault):
    crashed = run_subprocess(APPLY, {**subprocess_env, faults.ENV_FAULT: fault})
    assert crashed.returncode == faults.EXIT_CODE, crashed.stderr
    assert snapshot(pg_url)["run"] == [("running",)]
    resumed = run_subprocess(APPLY, subprocess_env)
    assert resumed.returncode == 0, resumed.stderr
    state = snapshot(pg_url)
    state["messages"] = messages(kafka_bootstrap, subprocess_env[settings.ENV_TOPIC])
    assert state == reference


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [find_tansu(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("private broker did not start")


def test_broker_down_during_apply_then_next_run_publishes(tmp_path, subprocess_env, pg_url):
    seed(tmp_path, subprocess_env, pg_url)
    broker, bootstrap = start_broker(tmp_path)
    topic = subprocess_env[settings.ENV_TOPIC]
    marker = tmp_path / "paused"
    env = {
        **subprocess_env,
        settings.ENV_KAFKA: bootstrap,
        faults.ENV_FAULT: "after_commit:1:pause",
        faults.ENV_FAULT_FILE: str(marker),
    }
    try:
        create_topic(bootstrap, topic)

        def stop_broker_at_pause() -> None:
            while not marker.exists():
                time.sleep(0.05)
            broker.kill()  # the private broker of this test, by its process handle
            broker.wait()
            marker.unlink()

        stopper = threading.Thread(target=stop_broker_at_pause, daemon=True)
        stopper.start()
        down = run_subprocess([*APPLY, "--publish-timeout", "2"], env, timeout=180)
        stopper.join(5)
        assert down.returncode == 1, down.stderr
        assert "Kafka did not confirm" in down.stderr and "they stay in the outbox" in down.stderr
        state = snapshot(pg_url)
        # Postgres is committed for every person; nothing was confirmed, so every message waits.
        assert [row[4] for row in state["persons"]].count(4) == 8
        assert len(state["outbox"]) == 9 and not any(row[4] for row in state["outbox"])
        assert {row[1] for row in state["ledger"]} == {"failed", "succeeded"}
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()

    broker, bootstrap = start_broker(tmp_path)
    try:
        create_topic(bootstrap, topic)
        env = {**subprocess_env, settings.ENV_KAFKA: bootstrap}
        back = run_subprocess(APPLY, env)
        assert back.returncode == 0, back.stderr
        state = snapshot(pg_url)
        assert all(row[4] for row in state["outbox"])
        published = read_topic(bootstrap, topic)
        assert {m.key().decode() for m in published} == {str(row[0]) for row in state["outbox"]}
        assert {row[1] for row in state["ledger"]} == {"succeeded"}
    finally:
        broker.kill()
        broker.wait()
