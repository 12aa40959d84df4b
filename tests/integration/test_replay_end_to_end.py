"""`semantics: replay` end to end on demo data: build, `runner apply`, `runner warehouse sync-persons`
(ClickHouse ingests the person topic), build again: the job's persons are no longer in the diff, and
`runner verify` is ok with no rule artifacts. In both modes."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from schedule_support import WINDOW, runner, seed_data

from runner.config import settings
from runner.jobs.dbt import run_dbt
from runner.stores import warehouse

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"clickhouse_person_{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap, "log_level": 3})
    for future in admin.create_topics([NewTopic(name, 3, 1)], operation_timeout=10).values():
        future.result()
    monkeypatch.setenv(settings.ENV_TOPIC, name)
    return name


def job_persons_in_diff(pg, job_id: str) -> tuple[int, int]:
    """(persons the job updated, how many of them the diff table lists)."""
    updated = {
        (t, str(u))
        for t, u in pg.execute("SELECT team_id, person_uuid FROM recon_outbox WHERE job_id = %s", (job_id,))
    }
    listed = {
        (int(t), str(p))
        for t, p in warehouse.client()
        .query("SELECT team_id, person_id FROM recon.person_property_diff")
        .result_rows
    }
    return len(updated), len(updated & listed)


@pytest.mark.parametrize("window_seconds", [0, 3600])
def test_replay_repairs_are_not_listed_again(clean_pg, pg_url, topic, window_seconds: int) -> None:
    seed_data(pg_url, teams=3, persons=400, events=8000, seed=14)
    dbt_vars = {**WINDOW, "window_seconds": window_seconds, "semantics": "replay"}
    run_dbt("run", dbt_vars)
    job = f"e2e-replay-{window_seconds}"

    applied = runner("apply", "--job-id", job, "--output", "json")
    assert applied.exit_code == 0, applied.stderr
    (summary,) = applied.of_type("summary")
    assert summary["semantics"] == "replay" and summary["updated"] > 20

    synced = runner("warehouse", "sync-persons")
    assert synced.exit_code == 0, synced.stderr

    run_dbt("run", dbt_vars)
    updated, still_listed = job_persons_in_diff(clean_pg, job)
    assert updated == summary["updated"] and still_listed == 0

    verified = runner("verify", "--job-id", job, "--vars", json.dumps(dbt_vars), "--output", "json")
    report = json.loads(verified.stdout)
    assert verified.exit_code == 0, report
    assert report["semantics"] == "replay"
    assert (report["ok"], report["rule_artifact"], report["differs"]) == (updated, 0, 0)
