"""Validation of the dbt vars (macros/recon_vars.sql): every bad value stops the run with an error that
names the var and the problem, before any model SQL runs.

The checks run through `dbt run-operation recon_check_vars --args ...` (one parse of the project for
all cases), and one real `dbt run` shows that the on-run-start validation stops a build.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import models_harness as mh
import pytest
import reference_rules as rr

from runner.jobs.dbt import DbtFailed

pytestmark = pytest.mark.integration

GOOD = {
    "bug_window_start": "2026-01-06 20:01:00",
    "bug_window_end": "2026-01-07 14:52:00",
    "now": None,
    "team_ids": [],
    "exclude_team_ids": [],
    "min_team_id": None,
    "max_team_id": None,
    "window_seconds": 0,
    "person_batch_size": 10000,
    "source_database": "posthog",
    "semantics": "original",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> mh.ModelsEnv:
    models_env = mh.ModelsEnv(
        "posthog_models_vars", "recon_models_vars", tmp_path_factory.mktemp("dbt-target")
    )
    models_env.init_sources()
    models_env.drop_models()
    return models_env


def check(env: mh.ModelsEnv, **changes: object) -> tuple[bool, str]:
    return env.operation("recon_check_vars", {"raw": {**GOOD, **changes}})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"bug_window_start": None}, "var bug_window_start is missing"),
        ({"bug_window_end": None}, "var bug_window_end is missing"),
        (
            {"bug_window_end": "2026-01-06 20:01:00"},
            "var bug_window_end (2026-01-06 20:01:00) must be after bug_window_start",
        ),
        (
            {"bug_window_start": "2026-01-06T20:01:00"},
            'var bug_window_start: "2026-01-06T20:01:00" is not a timestamp in the format '
            "YYYY-MM-DD HH:MM:SS",
        ),
        ({"bug_window_start": "2026-1-6 20:01:00"}, "var bug_window_start"),
        (
            {"bug_window_end": "2026-02-30 00:00:00"},
            'var bug_window_end: "2026-02-30 00:00:00" is not a valid date and time',
        ),
        ({"now": "yesterday"}, 'var now: "yesterday" is not a timestamp'),
        ({"bug_window_start": "2026-01-06 20:01:00') OR 1=1 --"}, "var bug_window_start"),
        ({"team_ids": [1, "two"]}, 'var team_ids: team id "two" is not an integer'),
        ({"team_ids": [1, 2.5]}, "var team_ids: team id 2.5 is not an integer"),
        ({"team_ids": "1; DROP TABLE x"}, "var team_ids: team id"),
        ({"exclude_team_ids": [-3]}, "var exclude_team_ids: team id -3 is negative"),
        ({"min_team_id": "ten"}, 'var min_team_id: "ten" is not an integer'),
        ({"min_team_id": 9, "max_team_id": 3}, "var min_team_id (9) is greater than var max_team_id (3)"),
        ({"window_seconds": -1}, "var window_seconds: -1 is negative"),
        ({"person_batch_size": 0}, "var person_batch_size: 0 is negative or too small (minimum 1)"),
        ({"person_batch_size": True}, "var person_batch_size: true is not an integer"),
        ({"source_database": "posthog`; DROP DATABASE recon"}, "var source_database"),
        ({"semantics": "Replay"}, "var semantics: \"Replay\" is not one of 'original'"),
        ({"semantics": "replay' OR 1=1"}, "var semantics"),
        ({"semantics": ["replay"]}, "var semantics"),
    ],
)
def test_bad_vars_are_rejected_with_the_var_named(env: mh.ModelsEnv, changes: dict, message: str) -> None:
    ok, errors = check(env, **changes)
    assert not ok
    assert message in errors


def test_good_vars_pass_in_every_accepted_form(env: mh.ModelsEnv) -> None:
    assert check(env) == (True, "")
    assert check(
        env,
        team_ids="3, 1,2",
        exclude_team_ids=4,
        min_team_id="1",
        max_team_id=9,
        window_seconds="3600",
        now="2026-01-20 00:00:00",
    ) == (True, "")
    assert check(env, semantics="replay") == (True, "")
    assert check(env, semantics=None) == (True, "")  # unset: the default, original


def test_a_bad_var_stops_dbt_run_before_any_model(env: mh.ModelsEnv, tmp_path: Path) -> None:
    with pytest.raises(DbtFailed) as failure:
        env.run(
            {
                "bug_window_start": "2026-01-06 20:01:00",
                "bug_window_end": "2026-01-07 14:52:00",
                "window_seconds": -5,
            }
        )
    assert "var window_seconds" in str(failure.value)
    tables = env.query(f"SELECT count() FROM system.tables WHERE database = '{env.target_schema}'")
    assert tables[0][0] == 0


def test_now_from_recon_now_keeps_partial_parsing_warm(
    env: mh.ModelsEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RECON_NOW sets `now` like the var does, but a new value on every build (an hourly schedule,
    the benchmark) leaves `--vars` alone, so dbt reuses its parsed project (partial_parse.msgpack is
    not rewritten); a changed `--vars` makes dbt parse everything again."""
    dbt_vars = {"bug_window_start": "2026-01-06 20:01:00", "bug_window_end": "2026-01-07 14:52:00"}
    local = mh.ModelsEnv(env.source_database, "recon_models_vars_now", tmp_path)
    local.drop_models()
    person = uuid.uuid5(uuid.NAMESPACE_URL, "recon-vars/now")
    local.insert_events(
        [rr.Event(person, 1, "d1", person, datetime(2026, 1, 7, tzinfo=UTC), '{"$set": {"a": 1}}')]
    )
    msgpack = tmp_path / "partial_parse.msgpack"

    def built_until() -> str:
        rows = local.query(
            f"SELECT toString(max(built_until)) FROM {local.target_schema}.int_person_property_ops__by_window"
        )
        return str(rows[0][0])

    monkeypatch.setenv("RECON_NOW", "2026-01-10 00:00:00")
    local.run(dbt_vars)
    assert built_until().startswith("2026-01-10 00:00:00")
    parsed = msgpack.stat().st_mtime_ns
    monkeypatch.setenv("RECON_NOW", "2026-01-10 01:00:00")
    local.run(dbt_vars)
    assert built_until().startswith("2026-01-10 01:00:00")
    assert msgpack.stat().st_mtime_ns == parsed
    # the var wins over the environment, and a change of --vars re-parses the project
    local.run({**dbt_vars, "now": "2026-01-10 02:00:00"})
    assert built_until().startswith("2026-01-10 02:00:00")
    assert msgpack.stat().st_mtime_ns != parsed
    monkeypatch.setenv("RECON_NOW", "yesterday")
    with pytest.raises(DbtFailed) as failure:
        local.run(dbt_vars)
    assert 'var now: "yesterday" is not a timestamp' in str(failure.value)
