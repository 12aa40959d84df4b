"""The optional Dagster definitions: the sensor reads the original JSON cursor (R12.2 to R12.5, progress
in the cursor) and launches runs with the original's tags and run configuration; the job builds and
applies one chunk with op-per-slice fan-out, run here with Dagster's in-process executor on seeded
data, a failing team included."""

from __future__ import annotations

import json
import uuid

import pytest
from schedule_support import WINDOW, allow_updates, ledger, reject_updates, seed_data

dagster = pytest.importorskip("dagster")
dagster_defs = pytest.importorskip("runner.orchestration.dagster_defs")

pytestmark = pytest.mark.integration

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, build_sensor_context  # noqa: E402

SENSOR = dagster_defs.person_property_reconciliation_scheduler
JOB = dagster_defs.person_property_reconciliation_job


@pytest.fixture
def instance():
    with DagsterInstance.ephemeral() as inst:
        yield inst


def tick(instance, cursor: dict | str | None):
    text = cursor if cursor is None or isinstance(cursor, str) else json.dumps(cursor)
    context = build_sensor_context(instance=instance, cursor=text)
    return SENSOR.evaluate_tick(context), context


def without_dagster_tags(tags: dict) -> dict:
    return {k: v for k, v in tags.items() if not k.startswith("dagster/")}


def add_active_run(instance, status=DagsterRunStatus.STARTED) -> None:
    instance.add_run(DagsterRun(job_name=JOB.name, run_id=str(uuid.uuid4()), status=status))


def test_sensor_skips_invalid_cursors_and_changes_nothing(instance):
    data, context = tick(instance, None)
    assert (
        data.run_requests == []
        and "is empty" in data.skip_message
        and '"range_start": 1' in data.skip_message
    )
    assert context.cursor is None
    bad = {**WINDOW, "team_ids": [1], "max_concurrent_jobs": 99}
    data, context = tick(instance, bad)
    assert data.run_requests == [] and data.skip_message == "max_concurrent_jobs 99 exceeds cap of 50"
    assert json.loads(context.cursor) == bad
    data, _ = tick(instance, "{broken")
    assert "not valid JSON" in data.skip_message and "{broken" in data.skip_message


def test_sensor_launches_within_the_caps_and_advances_the_cursor(instance):
    cursor = {
        **WINDOW,
        "range_start": 1,
        "range_end": 5000,
        "chunk_size": 1000,
        "max_concurrent_jobs": 3,
        "max_concurrent_tasks": 7,
        "teams_per_chunk": 50,
        "exclude_team_ids": [13],
    }
    add_active_run(instance)
    add_active_run(instance, DagsterRunStatus.SUCCESS)  # finished runs do not count
    data, context = tick(instance, cursor)
    assert [without_dagster_tags(r.tags) for r in data.run_requests] == [
        {"reconciliation_range": "1-1000", "owner": "team-ingestion"},
        {"reconciliation_range": "1001-2000", "owner": "team-ingestion"},
    ]
    config = data.run_requests[0].run_config["ops"]["discover_teams"]["config"]
    assert (config["min_team_id"], config["max_team_id"], config["exclude_team_ids"]) == (1, 1000, [13])
    assert (config["teams_per_chunk"], config["bug_window_start"]) == (50, WINDOW["bug_window_start"])
    # On the embedded engine the runs must execute in-process (one process per engine path).
    assert data.run_requests[0].run_config["execution"] == {"config": {"in_process": {}}}
    written = json.loads(context.cursor)
    assert written == {**cursor, "next_chunk_start": 2001}  # progress at launch

    add_active_run(instance)
    add_active_run(instance)
    data, context = tick(instance, written)
    assert data.run_requests == [] and data.skip_message == "at max concurrency: 3 active runs of 3"
    assert json.loads(context.cursor) == written


def test_sensor_list_mode_to_completion(instance):
    cursor = {**WINDOW, "team_ids": [5, 6, 7], "chunk_size": 2, "max_concurrent_jobs": 1}
    data, context = tick(instance, cursor)
    (request,) = data.run_requests
    assert request.tags["reconciliation_team_ids_range"] == "0-1"
    assert request.run_config["ops"]["discover_teams"]["config"]["team_ids"] == [5, 6]
    data, context = tick(instance, json.loads(context.cursor))
    assert data.run_requests[0].run_config["ops"]["discover_teams"]["config"]["team_ids"] == [7]
    data, _ = tick(instance, json.loads(context.cursor))
    assert data.skip_message == "complete: all 3 teams launched"


@pytest.fixture
def seeded(clean_pg, pg_url, kafka_bootstrap):
    result = seed_data(pg_url)
    yield result
    allow_updates(clean_pg)


def test_job_runs_one_chunk_in_process_with_an_op_per_slice(seeded, clean_pg, instance):
    reject_updates(clean_pg, 2)
    config = dagster_defs.schedule.validate(
        {**WINDOW, "range_start": 1, "range_end": 4, "chunk_size": 4, "teams_per_chunk": 2, "batch_size": 10}
    )
    chunk = dagster_defs.scheduling.plan_chunks(config)[0]
    run_config = dagster_defs.run_config_for(config, chunk, embedded=True)
    result = JOB.execute_in_process(
        run_config={"ops": run_config["ops"]},
        instance=instance,
        resources={"recon_dbt": dagster_defs.ReconDbt()},
        raise_on_error=False,
    )
    # The run fails because a team failed; the other slices and teams were applied regardless.
    assert not result.success
    discovered = result.output_for_node("discover_teams")
    assert [t["team_id"] for t in discovered["teams"]] == [1, 2, 3]
    slices = result.output_for_node("reconcile_chunk")
    assert set(slices) == {"teams_1_2", "team_3"}
    assert (slices["teams_1_2"]["teams_failed"], slices["teams_1_2"]["failed_team_ids"]) == (1, "[2]")
    assert slices["team_3"]["teams_succeeded"] == 1 and slices["team_3"]["persons_updated"] > 0
    teams_results = json.loads(slices["teams_1_2"]["teams_results"])
    assert [(t["team_id"], t["status"]) for t in teams_results] == [(1, "success"), (2, "failed")]
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "summarize")
    assert "1 teams failed: [2]" in failure.step_failure_data.user_failure_data.description

    # The ledger knows every team under the Dagster run id, and the run's overall status.
    run_id = result.run_id
    assert {(job, team): status for (job, team), (status, _) in ledger(clean_pg).items()} == {
        (run_id, 1): "succeeded",
        (run_id, 2): "failed",
        (run_id, 3): "succeeded",
    }
    assert clean_pg.execute("SELECT status FROM recon_run WHERE job_id = %s", (run_id,)).fetchone() == (
        "failed",
    )
    assert dict(clean_pg.execute("SELECT team_id, chunk_id FROM recon_run_team").fetchall()) == {
        1: "teams_1_2",
        2: "teams_1_2",
        3: "team_3",
    }


def test_definitions_load():
    dagster.Definitions.validate_loadable(dagster_defs.defs)
    assert JOB.name == "person_property_reconciliation_job"
    assert SENSOR.default_status == dagster.DefaultSensorStatus.STOPPED
    assert SENSOR.minimum_interval_seconds == 30
    assert dagster_defs.discover_teams.pool == dagster_defs.DBT_POOL
