"""`runner schedule` and the outbox quarantine: chunks whose messages Kafka rejects for good still apply
(their persons are committed), the schedule's summary counts the quarantined messages and it exits 1
until they are retried or discarded (as apply and restore do for their job)."""

from __future__ import annotations

import json

import pytest
from schedule_support import runner, seed_data, write_config

pytestmark = pytest.mark.integration


@pytest.fixture
def seeded(clean_pg, pg_url, kafka_bootstrap):
    return seed_data(pg_url)


def test_schedule_exits_1_while_its_messages_are_quarantined(seeded, clean_pg, tmp_path):
    pg = clean_pg
    # A 1.2 MB property the diff does not touch: every message of team 1 is over Kafka's 1 MB limit.
    pg.execute(
        "UPDATE posthog_person SET properties = properties "
        "|| jsonb_build_object('blob', repeat('x', 1200000)) WHERE team_id = 1"
    )
    path = write_config(tmp_path, "c.json", team_ids=[1, 2], chunk_size=1)
    run = runner("schedule", "--config", str(path), "--output", "json")
    assert run.exit_code == 1, run.stderr
    summary = run.of_type("summary")[0]
    sid = run.of_type("schedule")[0]["schedule_id"]
    assert summary["teams_failed"] == 0 and summary["persons_updated"] > 0
    quarantined = pg.execute(
        "SELECT job_id, count(*) FROM recon_outbox_status WHERE status = 'quarantined' GROUP BY 1"
    ).fetchall()
    team1_updates = pg.execute(
        "SELECT updated FROM recon_run_team WHERE job_id = %s AND team_id = 1", (f"{sid}-teams-0-0",)
    ).fetchone()[0]
    assert quarantined == [(f"{sid}-teams-0-0", team1_updates)] and team1_updates > 0
    assert summary["quarantined_messages"] == team1_updates
    assert pg.execute(
        "SELECT count(*) FROM recon_outbox_status WHERE job_id = %s AND status <> 'published'",
        (f"{sid}-teams-1-1",),
    ).fetchone() == (0,)

    human = runner("schedule", "--config", str(path))
    assert human.exit_code == 1  # nothing left to run, but the messages are still quarantined
    assert f"{team1_updates} outbox messages of this schedule are quarantined" in human.stdout
    assert "runner outbox list" in human.stdout

    assert runner("outbox", "discard", "--all", "--reason", "test").exit_code == 0
    again = runner("schedule", "--config", str(path), "--output", "json")
    assert again.exit_code == 0, again.stderr
    assert again.of_type("summary")[0]["quarantined_messages"] == 0
    assert json.loads(runner("outbox", "list", "--output", "json").stdout)["counts"] == {
        "quarantined": 0,
        "pending": 0,
    }
