"""Poison messages on the real stack: a message Kafka rejects for good is quarantined in the outbox with
its error, never blocking later runs, and `runner outbox` lists, retries and discards it.

librdkafka refuses a message larger than its `message.max.bytes` (1,000,000 by default, as Kafka's
brokers) at `produce()` with MSG_SIZE_TOO_LARGE; Tansu itself accepts any size, so the client is what
rejects the 1.2 MB messages below, as it would in front of a production broker.

The apply tests' data helpers and fixtures (tests/integration/apply) are reused, as test_restore does.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kafka_util import read_topic_json

from runner.cli import main
from runner.config import faults

pytestmark = pytest.mark.integration

_APPLY_TESTS = Path(__file__).resolve().parent / "apply"
if str(_APPLY_TESTS) not in sys.path:
    sys.path.insert(0, str(_APPLY_TESTS))
support = importlib.import_module("apply_support")


def _load_apply_fixtures() -> Any:
    spec = importlib.util.spec_from_file_location("outbox_tests_apply_fixtures", _APPLY_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_fixtures = _load_apply_fixtures()
ch = _fixtures.ch
topic = _fixtures.topic
env = _fixtures.env
pg_rows = _fixtures.pg_rows
run_apply = _fixtures.run_apply
_no_fault_env = _fixtures._no_fault_env
ApplyRun = _fixtures.ApplyRun

BIG = "x" * 1_200_000  # a 1.2 MB property value: its person's message is over Kafka's 1 MB limit
TEAM1 = [support.new_uuid(100 + i) for i in range(3)]
TEAM2 = [support.new_uuid(200 + i) for i in range(2)]
POISON = TEAM1[1]


def run_cli(*args: str) -> ApplyRun:
    faults.reset()
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return ApplyRun(result.exit_code, result.stdout, result.stderr)


def seed(env: dict[str, Any]) -> None:
    """Teams 1 and 2, one SET each; team 1's second person is set to a 1.2 MB value."""
    for team, uuids in ((1, TEAM1), (2, TEAM2)):
        support.insert_ch_persons(env["ch"], [(team, u, {"plan": "free"}, 2) for u in uuids])
        for u in uuids:
            support.insert_pg_person(env["pg"], team, u, {"plan": "free"}, 2)
        support.insert_diffs(
            env["ch"],
            [
                support.Diff(
                    team, u, 2, set={"plan": (json.dumps(BIG) if u == POISON else '"paid"', support.TS)}
                )
                for u in uuids
            ],
        )
    support.insert_summary(env["ch"], {1: 3, 2: 2})


def outbox_state(pg_rows, job_id: str) -> dict[str, tuple]:
    """{person uuid: (job, status, published, error)} of a job's messages, from the status view."""
    return {
        str(u): (job, status, published, error)
        for u, job, status, published, error in pg_rows(
            "SELECT person_uuid, job_id, status, published_at IS NOT NULL, error FROM recon_outbox_status "
            "WHERE job_id = %s",
            (job_id,),
        )
    }


@pytest.fixture
def poisoned(env, run_apply, pg_rows, kafka_bootstrap) -> dict[str, Any]:
    """Team 1 applied as job-a: its second person's message is quarantined."""
    seed(env)
    run = run_apply("--job-id", "job-a", "--team-id", "1", "--batch-size", "2", "--output", "json")
    return {**env, "run": run}


def test_oversized_message_is_quarantined_and_later_runs_go_on(poisoned, run_apply, pg_rows, kafka_bootstrap):
    run = poisoned["run"]
    assert run.exit_code == 1, run.stderr

    # Later runs go on: another apply drains the outbox without tripping on the poison message...
    later = run_apply("--job-id", "job-b", "--team-id", "2", "--output", "json")
    assert later.exit_code == 0, later.stderr
    assert later.summary()["quarantined"] == 0
    assert {outbox_state(pg_rows, "job-b")[str(u)][1] for u in TEAM2} == {"published"}
    assert pg_rows("SELECT job_id, status FROM recon_run ORDER BY job_id") == [
        ("job-a", "succeeded"),
        ("job-b", "succeeded"),
    ]
    # ...and so does the undo of job-a, which publishes every restored person.
    undo = run_cli("restore", "--job-id", "job-a", "--restore-job-id", "undo-a", "--output", "json")
    assert undo.exit_code == 0, undo.stderr
    assert undo.summary()["restored"] == 3 and undo.summary()["quarantined"] == 0
    assert pg_rows(
        'SELECT count(*) FROM posthog_person WHERE team_id = 1 AND properties = \'{"plan": "free"}\''
    ) == [(3,)]
    assert pg_rows("SELECT status, count(*) FROM recon_outbox_status WHERE job_id = 'undo-a' GROUP BY 1") == [
        ("published", 3)
    ]

    # job-a: every person of team 1 is committed in Postgres and counted so; the run exited 1 and said why.
    summary = run.summary()
    assert (summary["processed"], summary["updated"]) == (3, 3)
    assert summary["teams"][0]["status"] == "succeeded"
    assert summary["quarantined"] == 1
    assert "runner outbox list --job-id job-a" in summary["quarantine_note"]
    assert "1 message of job job-a is quarantined" in run.stderr
    state = outbox_state(pg_rows, "job-a")
    assert state[str(POISON)][:3] == ("job-a", "quarantined", False)
    assert "MSG_SIZE_TOO_LARGE" in state[str(POISON)][3]
    assert [state[str(u)][:3] for u in (TEAM1[0], TEAM1[2])] == [("job-a", "published", True)] * 2
    # The batches are settled: the one holding the poison message is published for its other person.
    assert pg_rows("SELECT count(*) FROM recon_outbox_batch WHERE published_at IS NULL") == [(0,)]
    # Kafka got job-a's other two persons (and the undo's three), never the poison message.
    published = {
        (key, value["version"]) for key, value in read_topic_json(kafka_bootstrap, poisoned["topic"])
    }
    assert {(str(TEAM1[0]), 3), (str(TEAM1[2]), 3), (str(POISON), 4)} <= published
    assert (str(POISON), 3) not in published
    # Only the quarantined message is neither published nor pending.
    assert pg_rows("SELECT status, count(*) FROM recon_outbox_status GROUP BY 1 ORDER BY 1") == [
        ("published", 7),
        ("quarantined", 1),
    ]


def test_rerun_of_the_job_still_exits_1_while_its_message_is_quarantined(poisoned, run_apply, pg_rows):
    again = run_apply("--job-id", "job-a", "--team-id", "1", "--output", "human")
    assert again.exit_code == 1, again.stderr
    assert "1 message of job job-a is quarantined" in again.stdout
    assert "runner outbox list --job-id job-a" in again.stdout
    # Nothing was applied twice; the quarantined message was not produced again by the drain.
    assert pg_rows("SELECT count(*) FROM recon_outbox") == [(3,)]
    assert pg_rows("SELECT max(version) FROM posthog_person") == [(3,)]


def test_restore_whose_message_is_too_large_is_quarantined(env, run_apply, pg_rows, kafka_bootstrap):
    """apply removes a 1.2 MB property; undoing it puts the property back, and that message is too large."""
    person = support.new_uuid(7)
    support.insert_ch_persons(env["ch"], [(1, person, {"blob": BIG, "plan": "free"}, 2)])
    support.insert_pg_person(env["pg"], 1, person, {"blob": BIG, "plan": "free"}, 2)
    support.insert_diffs(env["ch"], [support.Diff(1, person, 2, unset={"blob": support.TS})])
    support.insert_summary(env["ch"], {1: 1})
    applied = run_apply("--job-id", "shrink", "--output", "json")
    assert applied.exit_code == 0, applied.stderr

    undo = run_cli("restore", "--job-id", "shrink", "--restore-job-id", "undo-shrink")
    assert undo.exit_code == 1, undo.stderr
    assert "1 message of job undo-shrink is quarantined" in undo.stdout
    assert "runner outbox list --job-id undo-shrink" in undo.stdout
    assert "restored" in undo.stdout
    assert pg_rows("SELECT properties ? 'blob', version FROM posthog_person") == [(True, 4)]
    assert pg_rows("SELECT job_id, status FROM recon_outbox_status ORDER BY id") == [
        ("shrink", "published"),
        ("undo-shrink", "quarantined"),
    ]
    assert pg_rows("SELECT team_id, status, updated FROM recon_run_team WHERE job_id = 'undo-shrink'") == [
        (1, "succeeded", 1)
    ]


def test_report_names_the_quarantined_messages_until_they_are_settled(poisoned, pg_rows):
    """The ledger records team 1 as succeeded (its persons are committed), yet its Kafka message is not
    delivered: `runner report` says so and exits 1 until the message is published or discarded."""
    report = run_cli("report", "--job-id", "job-a")
    assert report.exit_code == 1, report.stderr
    assert "1 succeeded, 0 failed" in report.stdout
    assert "1 message of job job-a is quarantined" in report.stdout
    assert "runner outbox list --job-id job-a" in report.stdout
    document = json.loads(run_cli("report", "--job-id", "job-a", "--output", "json").stdout)
    assert document["quarantined_messages"] == {"job-a": 1}

    poison_id = pg_rows("SELECT id FROM recon_outbox WHERE person_uuid = %s", (POISON,))[0][0]
    assert run_cli("outbox", "discard", "--id", str(poison_id), "--reason", "fixed by hand").exit_code == 0
    settled = run_cli("report", "--job-id", "job-a", "--output", "json")
    assert settled.exit_code == 0, settled.stdout
    assert json.loads(settled.stdout)["quarantined_messages"] == {}


def test_list_retry_discard(poisoned, run_apply, pg_rows, kafka_bootstrap):
    poison_id = pg_rows("SELECT id FROM recon_outbox WHERE person_uuid = %s", (POISON,))[0][0]
    # A pending message of another job, as a crash would leave it.
    left = support.new_uuid(999)
    poisoned["pg"].execute(
        "INSERT INTO recon_outbox (job_id, team_id, person_uuid, version, payload) "
        "VALUES ('old', 9, %s, 7, %s)",
        (left, json.dumps({"id": str(left), "version": 7})),
    )

    listed = run_cli("outbox", "list")
    assert listed.exit_code == 1  # something remains
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["id", "job", "team", "person", "version", "bytes", "status", "since", "error"]
    rows = {line.split()[3]: line for line in lines[1:-1]}
    assert set(rows) == {str(POISON), str(left)}
    assert "quarantined" in rows[str(POISON)] and "MSG_SIZE_TOO_LARGE" in rows[str(POISON)]
    assert "pending" in rows[str(left)]
    assert "1 quarantined, 1 pending" in lines[-1]

    as_json = run_cli("outbox", "list", "--job-id", "job-a", "--output", "json")
    assert as_json.exit_code == 1
    document = json.loads(as_json.stdout)
    assert document["counts"] == {"quarantined": 1, "pending": 0}
    [message] = document["messages"]
    assert {k: message[k] for k in ("id", "job_id", "team_id", "person_uuid", "version", "status")} == {
        "id": poison_id,
        "job_id": "job-a",
        "team_id": 1,
        "person_uuid": str(POISON),
        "version": 3,
        "status": "quarantined",
    }
    assert message["bytes"] > 1_200_000 and "MSG_SIZE_TOO_LARGE" in message["error"]
    pending = json.loads(run_cli("outbox", "list", "--status", "pending", "--output", "json").stdout)
    assert pending["counts"] == {"pending": 1}

    # Retrying with the same limits fails again: still quarantined, with the new attempt's error.
    first_error_at = pg_rows("SELECT quarantined_at FROM recon_outbox WHERE id = %s", (poison_id,))[0][0]
    retry = run_cli("outbox", "retry", "--job-id", "job-a")
    assert retry.exit_code == 1
    assert "0 published, 1 quarantined" in retry.stdout
    again = pg_rows("SELECT quarantined_at, error FROM recon_outbox WHERE id = %s", (poison_id,))[0]
    assert again[0] > first_error_at and "MSG_SIZE_TOO_LARGE" in again[1]

    # The pending one is published by a retry of everything; the poison one stays.
    retry_all = run_cli("outbox", "retry", "--all")
    assert retry_all.exit_code == 1
    assert "1 published, 1 quarantined" in retry_all.stdout
    assert outbox_state(pg_rows, "old")[str(left)][1:3] == ("published", True)

    # Discarding needs an explicit selection; it is recorded, never a delete.
    assert run_cli("outbox", "discard").exit_code == 2
    assert run_cli("outbox", "discard", "--id", "123456").exit_code == 2
    discard = run_cli("outbox", "discard", "--id", str(poison_id), "--reason", "too big; fixed by hand")
    assert discard.exit_code == 0, discard.stderr
    assert pg_rows(
        "SELECT status, discard_reason, error LIKE '%%MSG_SIZE_TOO_LARGE%%' "
        "FROM recon_outbox_status WHERE id = %s",
        (poison_id,),
    ) == [("discarded", "too big; fixed by hand", True)]
    assert run_cli("outbox", "list").exit_code == 0  # nothing remains
    discarded = json.loads(run_cli("outbox", "list", "--status", "discarded", "--output", "json").stdout)
    assert [m["id"] for m in discarded["messages"]] == [poison_id]
    assert run_cli("outbox", "retry", "--id", str(poison_id)).exit_code == 2  # discarded is for good
    keys = [key for key, _ in read_topic_json(kafka_bootstrap, poisoned["topic"])]
    assert str(POISON) not in keys and keys.count(str(left)) == 1
    # With its only quarantined message discarded, the job's re-run exits 0 (nothing applied twice).
    rerun = run_apply("--job-id", "job-a", "--team-id", "1", "--output", "json")
    assert rerun.exit_code == 0, rerun.stderr
    assert rerun.summary()["quarantined"] == 0
    assert pg_rows("SELECT count(*) FROM recon_outbox WHERE job_id = 'job-a'") == [(3,)]


def test_retry_with_a_larger_limit_publishes_the_quarantined_message(poisoned, pg_rows, kafka_bootstrap):
    """For a broker configured to accept larger messages (Tansu accepts any size)."""
    retry = run_cli("outbox", "retry", "--job-id", "job-a", "--message-max-bytes", "2000000")
    assert retry.exit_code == 0, retry.stderr
    assert "1 published, 0 quarantined" in retry.stdout
    assert outbox_state(pg_rows, "job-a")[str(POISON)][1:3] == ("published", True)
    published = dict(read_topic_json(kafka_bootstrap, poisoned["topic"]))
    assert json.loads(published[str(POISON)]["properties"])["plan"] == BIG
    assert run_cli("outbox", "list", "--job-id", "job-a").exit_code == 0


def test_outbox_usage_errors_exit_2(env, monkeypatch):
    monkeypatch.setenv("RECON_JOB_ID", "job-a")  # left from an apply: never a selection here
    assert run_cli("outbox", "discard").exit_code == 2
    assert run_cli("outbox", "retry").exit_code == 2
    assert run_cli("outbox", "retry", "--all", "--id", "1").exit_code == 2
    assert run_cli("outbox", "list", "--status", "nope").exit_code == 2
    assert run_cli("outbox", "list", "--job-id", "bad id").exit_code == 2
    helped = run_cli("outbox", "--help")
    assert helped.exit_code == 0
    for command in ("list", "retry", "discard"):
        assert command in helped.stdout


def test_broker_down_leaves_messages_pending_never_quarantined(env, pg_rows, pg_url, monkeypatch):
    """A transient failure (no broker answering) keeps today's behaviour: the messages stay pending for
    the next run, nothing is quarantined, and the drain reports it as a publish failure."""
    import psycopg

    from runner.config import settings
    from runner.stores.publisher import Publisher, PublishError, drain

    left = support.new_uuid(998)
    env["pg"].execute(
        "INSERT INTO recon_outbox (job_id, team_id, person_uuid, version, payload) "
        "VALUES ('old', 9, %s, 7, '{}')",
        (left,),
    )
    publisher = Publisher("127.0.0.1:1", env["topic"], timeout=1.0)
    with (
        psycopg.connect(pg_url, autocommit=True) as conn,
        pytest.raises(PublishError, match="stay in the outbox"),
    ):
        try:
            drain(conn, publisher)
        finally:
            publisher.close()
    assert pg_rows("SELECT status, error FROM recon_outbox_status") == [("pending", None)]

    # `runner outbox retry` against an unreachable broker changes nothing (exit 2, configuration).
    monkeypatch.setenv(settings.ENV_KAFKA, "127.0.0.1:1")
    assert run_cli("outbox", "retry", "--all").exit_code == 2
    assert pg_rows("SELECT status, error FROM recon_outbox_status") == [("pending", None)]


def test_backlog_drain_quarantines_what_it_cannot_send_and_publishes_the_rest(
    env, run_apply, pg_rows, kafka_bootstrap
):
    """Messages an earlier run left pending (a crash before publishing, say), read back from the outbox
    by the next run's drain: a single row and one message of a batch are too large."""
    seed(env)
    big, small, single = support.new_uuid(901), support.new_uuid(902), support.new_uuid(903)
    pg = env["pg"]
    [(batch_id,)] = pg.execute(
        "INSERT INTO recon_outbox_batch (job_id, team_id, first_id, last_id, messages) "
        "VALUES ('crashed', 9, 0, 0, 2) RETURNING id"
    ).fetchall()
    for person, payload in ((big, json.dumps({"blob": BIG})), (small, '{"ok": 1}')):
        pg.execute(
            "INSERT INTO recon_outbox (job_id, team_id, person_uuid, version, payload, batch_id) "
            "VALUES ('crashed', 9, %s, 5, %s, %s)",
            (person, payload, batch_id),
        )
    pg.execute(
        "UPDATE recon_outbox_batch SET first_id = (SELECT min(id) FROM recon_outbox), "
        "last_id = (SELECT max(id) FROM recon_outbox)"
    )
    pg.execute(
        "INSERT INTO recon_outbox (job_id, team_id, person_uuid, version, payload) "
        "VALUES ('crashed', 9, %s, 5, %s)",
        (single, json.dumps({"blob": BIG})),
    )

    run = run_apply("--job-id", "job-b", "--team-id", "2", "--output", "json")
    assert run.exit_code == 0, run.stderr  # the quarantined messages are another job's
    assert run.summary()["quarantined"] == 0
    assert outbox_state(pg_rows, "crashed") == {
        str(big): ("crashed", "quarantined", False, outbox_state(pg_rows, "crashed")[str(big)][3]),
        str(small): ("crashed", "published", True, None),
        str(single): ("crashed", "quarantined", False, outbox_state(pg_rows, "crashed")[str(single)][3]),
    }
    assert all("MSG_SIZE_TOO_LARGE" in row[3] for row in outbox_state(pg_rows, "crashed").values() if row[3])
    assert pg_rows("SELECT published_at IS NOT NULL FROM recon_outbox_batch WHERE id = %s", (batch_id,)) == [
        (True,)
    ]
    keys = {key for key, _ in read_topic_json(kafka_bootstrap, env["topic"])}
    assert str(small) in keys and not {str(big), str(single)} & keys
    assert "Outbox message" in run.stderr and "quarantined" in run.stderr
    listed = json.loads(run_cli("outbox", "list", "--job-id", "crashed", "--output", "json").stdout)
    assert listed["counts"] == {"quarantined": 2, "pending": 0}
