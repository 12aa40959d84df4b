"""The `semantics` var on the real engine: carried into the summary (and, for tables built before the
column existed, read as `original`)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import models_harness as mh
import pytest
import reference_rules as rr

pytestmark = pytest.mark.integration

W0, W1 = "2026-01-06 20:01:00", "2026-01-07 14:52:00"
NOW = "2026-01-20 00:00:00"
BASE = {"bug_window_start": W0, "bug_window_end": W1, "now": NOW}


def ts(text: str) -> datetime:
    return datetime.strptime(text, rr.TIME_FORMAT).replace(tzinfo=UTC)


def uid(label: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"recon-replay-test/{label}")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> mh.ModelsEnv:
    models_env = mh.ModelsEnv(
        source_database="posthog_models_replay",
        target_schema="recon_models_replay",
        target_path=tmp_path_factory.mktemp("dbt-target"),
    )
    models_env.drop_models()
    models_env.init_sources()
    return models_env


def two_teams(env: mh.ModelsEnv) -> None:
    env.init_sources()
    persons, events = [], []
    for team in (1, 2):
        person = uid(f"p{team}")
        persons.append(rr.PersonRow(person, team, json.dumps({"plan": "free"}), 0, 1, ts(W0), 0))
        events.append(
            rr.Event(
                uid(f"e{team}"),
                team,
                f"d{team}",
                person,
                ts("2026-01-07 00:00:00"),
                json.dumps({"$set": {"plan": "paid"}}),
            )
        )
    env.insert_persons(persons)
    env.insert_events(events)


def semantics_by_team(env: mh.ModelsEnv) -> dict[int, str]:
    rows = env.query(f"SELECT team_id, semantics FROM {env.target_schema}.person_property_diff_summary")
    return dict(rows)


def test_summary_semantics_and_rows_kept_from_a_table_without_the_column(env: mh.ModelsEnv) -> None:
    two_teams(env)
    env.drop_models()
    env.run(BASE)
    assert semantics_by_team(env) == {1: "original", 2: "original"}
    # a summary built before the column existed: a build of team 1 keeps team 2 as `original`
    env.client.command(f"ALTER TABLE {env.target_schema}.person_property_diff_summary DROP COLUMN semantics")
    env.run({**BASE, "team_ids": [1]})
    assert semantics_by_team(env) == {1: "original", 2: "original"}
