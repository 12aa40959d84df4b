"""Batches and commits (R9.11, R9.12), and persons changed or held by another writer mid-apply."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from apply_support import (
    TS,
    Diff,
    insert_ch_persons,
    insert_diffs,
    insert_pg_person,
    insert_summary,
    new_uuid,
)
from kafka_util import read_topic_json

from runner.config import faults

pytestmark = pytest.mark.integration


def seed_simple(env, team_id: int, n: int, first: int = 1, *, missing: tuple[int, ...] = ()) -> list:
    """n persons at version 3 in both stores with one SET each; `missing` ones lack a Postgres row."""
    uuids = [new_uuid(team_id * 1000 + first + i) for i in range(n)]
    insert_ch_persons(env["ch"], [(team_id, u, {"plan": "free", "n": i}, 3) for i, u in enumerate(uuids)])
    for i, u in enumerate(uuids):
        if i not in missing:
            insert_pg_person(env["pg"], team_id, u, {"plan": "free", "n": i}, 3)
    insert_diffs(env["ch"], [Diff(team_id, u, 3, set={"plan": ('"paid"', TS)}) for u in uuids])
    return uuids


@pytest.mark.parametrize(
    ("persons", "batch_size", "commits"),
    [(5, 2, 3), (4, 2, 2), (3, 5, 1), (6, 0, 1), (0, 2, 0)],
)
def test_commits_per_batch_size(env, run_apply, pg_rows, persons, batch_size, commits):
    """R9.12's examples."""
    seed_simple(env, 1, persons)
    insert_summary(env["ch"], {1: persons})
    run = run_apply("--job-id", "job-batches", "--batch-size", str(batch_size), "--output", "json")
    assert run.exit_code == 0, run.stderr
    team = run.summary()["teams"][0]
    assert (team["processed"], team["updated"], team["commits"]) == (persons, persons, commits)
    assert pg_rows("SELECT commits FROM recon_run_team") == [(commits,)]
    assert pg_rows("SELECT count(*) FROM posthog_person WHERE version = 4") == [(persons,)]
    assert run.stderr.count("Team 1: committed batch") == commits


def test_pages_smaller_than_batches_and_batches_without_updates(env, run_apply, pg_rows):
    """Pages of 2 inside batches of 3; the second batch has only persons without a Postgres row, so it
    writes nothing and is not committed."""
    seed_simple(env, 1, 8, missing=(3, 4, 5))
    insert_summary(env["ch"], {1: 8})
    run = run_apply("--job-id", "job-pages", "--batch-size", "3", "--page-size", "2", "--output", "json")
    assert run.exit_code == 0, run.stderr
    team = run.summary()["teams"][0]
    assert (team["processed"], team["updated"], team["skipped"], team["commits"]) == (8, 5, 3, 2)
    outcomes = [line["outcome"] for line in run.json_lines()[:-1]]
    assert outcomes == ["success"] * 3 + ["not_found"] * 3 + ["success"] * 2


def test_writer_changes_and_holds_persons_mid_apply(
    env, run_apply, pg_rows, pg_url, kafka_bootstrap, monkeypatch
):
    """Just before apply locks the second batch (the first one may still be committing: batches are
    pipelined), another writer (1) commits a change to a person of that batch, and (2) holds a lock on
    another one for ~0.5 s, then changes it too. Apply merges both three-way: the concurrent changes
    win, the rest of the diff applies on top of them."""
    uuids = [new_uuid(i) for i in range(1, 5)]
    base = {"plan": "free", "legacy": "x"}
    insert_ch_persons(env["ch"], [(1, u, base, 3) for u in uuids])
    for u in uuids:
        insert_pg_person(env["pg"], 1, u, base, 3)
    insert_diffs(
        env["ch"], [Diff(1, u, 3, set={"plan": ('"paid"', TS)}, unset={"legacy": TS}) for u in uuids]
    )
    insert_summary(env["ch"], {1: 4})
    changed, held = uuids[2], uuids[3]
    released = threading.Event()

    def hold_then_change() -> None:
        with psycopg.connect(pg_url) as conn:
            conn.execute("SELECT 1 FROM posthog_person WHERE uuid = %s FOR UPDATE", (held,))
            locked.set()
            time.sleep(0.5)
            conn.execute(
                'UPDATE posthog_person SET properties = properties || \'{"legacy": "kept"}\', '
                "version = version + 1 WHERE uuid = %s",
                (held,),
            )
        released.set()

    locked = threading.Event()
    original_point = faults.point

    locks: list[str] = []

    def point(name: str) -> None:
        if name == "before_lock":
            locks.append(name)
        if name == "before_lock" and len(locks) == 2 and not locked.is_set():
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    'UPDATE posthog_person SET properties = properties || \'{"legacy": "new", "extra": 1}\', '
                    "version = version + 1 WHERE uuid = %s",
                    (changed,),
                )
            threading.Thread(target=hold_then_change, daemon=True).start()
            assert locked.wait(5)
        original_point(name)

    monkeypatch.setattr(faults, "point", point)
    run = run_apply("--job-id", "job-concurrent", "--batch-size", "2", "--output", "json")
    assert run.exit_code == 0, run.stderr
    assert released.wait(5)
    persons = run.persons()
    assert [persons[str(u)]["outcome"] for u in uuids] == ["success"] * 4
    state = dict(pg_rows("SELECT uuid, properties FROM posthog_person"))
    versions = dict(pg_rows("SELECT uuid, version FROM posthog_person"))
    assert state[uuids[0]] == {"plan": "paid"} and versions[uuids[0]] == 4
    assert state[changed] == {"plan": "paid", "legacy": "new", "extra": 1} and versions[changed] == 5
    assert state[held] == {"plan": "paid", "legacy": "kept"} and versions[held] == 5
    assert persons[str(held)]["version_before"] == 4 and persons[str(held)]["version_after"] == 5
    assert "1 persons locked by another transaction; retrying" in run.stderr
    messages = {key: value["version"] for key, value in read_topic_json(kafka_bootstrap, env["topic"])}
    assert messages == {str(uuids[0]): 4, str(uuids[1]): 4, str(changed): 5, str(held): 5}


def test_messages_past_the_memory_bound_are_read_back_from_the_outbox(
    env, run_apply, pg_rows, kafka_bootstrap, monkeypatch
):
    """A batch whose messages are more than apply keeps in memory (here: 3) is published from its outbox
    rows after the commit; several written chunks (pages of 2) make one batch, each its own outbox
    batch, all marked published once confirmed."""
    from runner.engine import batches

    monkeypatch.setattr(batches, "KEPT_MESSAGES", 3)
    uuids = seed_simple(env, 1, 7)
    insert_summary(env["ch"], {1: 7})
    run = run_apply("--job-id", "job-kept", "--batch-size", "0", "--page-size", "2", "--output", "json")
    assert run.exit_code == 0, run.stderr
    assert run.summary()["teams"][0]["commits"] == 1
    assert pg_rows("SELECT count(*), count(published_at) FROM recon_outbox_batch") == [(4, 4)]
    assert pg_rows("SELECT count(*), count(published_at) FROM recon_outbox_status") == [(7, 7)]
    messages = {key: value["version"] for key, value in read_topic_json(kafka_bootstrap, env["topic"])}
    assert messages == {str(u): 4 for u in uuids}
