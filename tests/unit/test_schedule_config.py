"""The scheduler's cursor: validation in R12.2's order, chunking (R12.4, R12.5, R11.1), sensor ticks
(R12.3), the schedule id, and the team list from a CSV."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from runner.config import schedule
from runner.config.schedule import validate
from runner.config.settings import ConfigError
from runner.rules.scheduling import Chunk, plan_chunks, plan_launch, task_slices

W = {"bug_window_start": "2026-01-06 20:01:00", "bug_window_end": "2026-01-07 14:52:00"}


def config(**fields):
    return validate({**W, **fields})


def error_of(text_or_cursor) -> str:
    text = text_or_cursor if isinstance(text_or_cursor, str | None) else json.dumps(text_or_cursor)
    with pytest.raises(ConfigError) as info:
        schedule.load(text)
    return str(info.value)


# --- validation, in R12.2's order -----------------------------------------------------------------


def test_rule_1_no_cursor_shows_examples_of_both_modes():
    for text in (None, "", "  \n"):
        message = error_of(text)
        assert "empty" in message and '"team_ids": [1, 2, 3]' in message and '"range_start": 1' in message


def test_rule_2_invalid_json_quotes_first_100_characters():
    text = "{not json" + "x" * 200
    message = error_of(text)
    assert "not valid JSON" in message and repr(text[:100]) in message and text[:101] not in message
    assert "must be a JSON object" in error_of("[1, 2]")


def test_rule_3_both_modes():
    message = error_of({**W, "team_ids": [1, 2], "range_start": 1, "range_end": 9})
    assert "cannot specify both" in message and "[1, 2]" in message and "1..9" in message


@pytest.mark.parametrize(
    "cursor",
    [{}, {"team_ids": []}, {"range_start": 1}, {"range_end": 5}, {"team_ids": [], "range_start": 1}],
)
def test_rule_4_neither_mode(cursor):
    assert "must specify either team_ids or both range_start and range_end" in error_of({**W, **cursor})


def test_empty_team_ids_with_a_range_is_range_mode():
    assert config(team_ids=[], range_start=1, range_end=3).by_range


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"chunk_size": 0}, "chunk_size must be positive, got 0"),
        ({"chunk_size": -5}, "chunk_size must be positive, got -5"),
        ({"max_concurrent_jobs": 0}, "max_concurrent_jobs must be positive, got 0"),
        ({"max_concurrent_jobs": 51}, "max_concurrent_jobs 51 exceeds cap of 50"),
        ({"max_concurrent_tasks": 0}, "max_concurrent_tasks must be positive, got 0"),
        ({"max_concurrent_tasks": 101}, "max_concurrent_tasks 101 exceeds cap of 100"),
        ({"chunk_size": "10"}, "chunk_size must be an integer, got '10'"),
        ({"max_concurrent_jobs": True}, "max_concurrent_jobs must be an integer, got True"),
    ],
)
def test_rule_5_sizes_and_caps_name_the_value(fields, expected):
    assert expected in error_of({"team_ids": [1], **W, **fields})


def test_caps_themselves_are_allowed():
    c = config(team_ids=[1], max_concurrent_jobs=50, max_concurrent_tasks=100)
    assert (c.max_concurrent_jobs, c.max_concurrent_tasks) == (50, 100)


def test_rule_5_comes_before_rule_6():
    message = error_of({"team_ids": [1], "chunk_size": 0})
    assert "chunk_size" in message


@pytest.mark.parametrize("value", [None, ""])
def test_rule_6_window_start_then_end(value):
    cursor = {"team_ids": [1], "bug_window_start": value, "bug_window_end": value}
    assert "bug_window_start is required" in error_of(cursor)
    cursor["bug_window_start"] = W["bug_window_start"]
    assert "bug_window_end is required" in error_of(cursor)


def test_rule_7_range_order_names_both():
    assert "range_start (10) must not be greater than range_end (3)" in error_of(
        {**W, "range_start": 10, "range_end": 3}
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"bug_window_start": "2026-01-06"},
            "bug_window_start must be 'YYYY-MM-DD HH:MM:SS' (UTC), got '2026-01-06'",
        ),
        ({"bug_window_end": 5}, "bug_window_end must be a string"),
        (
            {"bug_window_start": "2026-01-08 00:00:00"},
            "bug_window_start (2026-01-08 00:00:00) must be before bug_window_end (2026-01-07 14:52:00)",
        ),
        (
            {"team_ids": [1, "2"]},
            "team_ids must contain team ids only (positive integers within Postgres bigint): "
            "'2' is not an integer",
        ),
        ({"exclude_team_ids": 3}, "exclude_team_ids must be a list of team ids, got 3"),
        ({"dry_run": "yes"}, "dry_run must be true or false, got 'yes'"),
        ({"person_batch_size": 0}, "person_batch_size must be positive, got 0"),
        (
            {"team_ch_props_fetch_window_seconds": 1.5},
            "team_ch_props_fetch_window_seconds must be an integer",
        ),
        ({"persons_db_env_var": ""}, "persons_db_env_var must name an environment variable"),
    ],
)
def test_beyond_the_original_types_and_formats(fields, expected):
    assert expected in error_of({**W, "team_ids": [1, 2], **fields})


def test_defaults_and_clamps():
    c = config(team_ids=[3, 1, 3, 2], teams_per_chunk=0, batch_size=-1)
    assert c.team_ids == (3, 1, 2)  # order kept, duplicates dropped
    assert (c.chunk_size, c.max_concurrent_jobs, c.max_concurrent_tasks) == (1000, 5, 10)
    assert (c.teams_per_chunk, c.batch_size) == (1, 0)  # R11.1 clamp; R14.1 <= 0 = one commit
    assert (c.dry_run, c.backup_enabled, c.person_batch_size, c.diff_mode) == (
        False,
        True,
        10_000,
        "single_pass",
    )
    assert config(team_ids=[1], team_ch_props_fetch_window_seconds=3600).diff_mode == "windowed"


def test_team_ids_from_a_file_replace_an_absent_list_only():
    text = json.dumps({**W, "chunk_size": 2})
    assert schedule.load(text, team_ids=[5, 6]).team_ids == (5, 6)
    with pytest.raises(ConfigError, match="given twice"):
        schedule.load(json.dumps({**W, "team_ids": [1]}), team_ids=[5])
    with pytest.raises(ConfigError, match="cannot specify both"):
        schedule.load(json.dumps({**W, "range_start": 1, "range_end": 2}), team_ids=[5])


# --- chunking -------------------------------------------------------------------------------------


def test_list_mode_chunks_by_position():
    chunks = plan_chunks(config(team_ids=[7, 3, 9, 1, 5], chunk_size=2))
    assert [(c.label, c.team_ids) for c in chunks] == [("0-1", (7, 3)), ("2-3", (9, 1)), ("4-4", (5,))]
    assert chunks[0].tags() == {
        "reconciliation_team_ids_range": "0-1",
        "reconciliation_team_count": "2",
        "owner": "team-ingestion",
    }


def test_range_mode_chunks_are_inclusive_sub_ranges():
    chunks = plan_chunks(config(range_start=1, range_end=2500, chunk_size=1000))
    assert [(c.min_team_id, c.max_team_id) for c in chunks] == [(1, 1000), (1001, 2000), (2001, 2500)]
    assert chunks[1].tags() == {"reconciliation_range": "1001-2000", "owner": "team-ingestion"}
    assert [(c.min_team_id, c.max_team_id) for c in plan_chunks(config(range_start=4, range_end=4))] == [
        (4, 4)
    ]


def test_progress_fields_start_the_plan_later():
    assert [c.label for c in plan_chunks(config(team_ids=[1, 2, 3, 4], chunk_size=2, next_team_index=2))] == [
        "2-3"
    ]
    assert [
        c.label
        for c in plan_chunks(config(range_start=1, range_end=1500, chunk_size=1000, next_chunk_start=1001))
    ] == ["1001-1500"]


def test_job_ids_and_dbt_vars_per_chunk():
    c = config(
        range_start=1,
        range_end=10,
        chunk_size=5,
        exclude_team_ids=[4],
        team_ch_props_fetch_window_seconds=3600,
    )
    first = plan_chunks(c)[0]
    sid = c.schedule_id()
    assert first.job_id(sid) == f"{sid}-range-1-5"
    assert first.dbt_vars(c) == {
        **W,
        "window_seconds": 3600,
        "person_batch_size": 10_000,
        "min_team_id": 1,
        "max_team_id": 5,
        "exclude_team_ids": [4],
    }
    assert first.selects(3, c.exclude_team_ids) and not first.selects(4, c.exclude_team_ids)
    assert not first.selects(6, c.exclude_team_ids)
    listed = plan_chunks(config(team_ids=[8, 2], chunk_size=5))[0]
    assert listed.dbt_vars(config(team_ids=[8, 2]), "other_db")["team_ids"] == [8, 2]
    assert listed.dbt_vars(config(team_ids=[8, 2]), "other_db")["source_database"] == "other_db"
    assert Chunk.from_json(listed.to_json()) == listed


def test_run_settings_are_the_originals_r12_6():
    c = config(range_start=1, range_end=10)
    settings = plan_chunks(c)[0].run_settings(c)
    assert set(settings) == {
        "min_team_id",
        "max_team_id",
        "bug_window_start",
        "bug_window_end",
        "dry_run",
        "backup_enabled",
        "batch_size",
        "teams_per_chunk",
        "team_ch_props_fetch_window_seconds",
        "person_batch_size",
    }


def test_task_slices_carry_the_originals_chunk_ids():
    assert task_slices([5, 1, 3, 9, 7], 2) == [("teams_1_3", [1, 3]), ("teams_5_7", [5, 7]), ("team_9", [9])]
    assert task_slices([4], 0) == [("team_4", [4])]
    assert task_slices([], 3) == []


def test_schedule_id_ignores_caps_and_progress_but_not_the_work():
    base = config(range_start=1, range_end=100, chunk_size=10)
    same = config(
        range_start=1, range_end=100, chunk_size=10, max_concurrent_jobs=1, next_chunk_start=51, dry_run=True
    )
    assert base.schedule_id() == same.schedule_id()
    assert base.schedule_id().startswith("sched-")
    for other in (
        config(range_start=1, range_end=100, chunk_size=20),
        config(range_start=1, range_end=101, chunk_size=10),
        config(range_start=1, range_end=100, chunk_size=10, team_ch_props_fetch_window_seconds=3600),
        config(range_start=1, range_end=100, chunk_size=10, exclude_team_ids=[3]),
    ):
        assert other.schedule_id() != base.schedule_id()


# --- the sensor's tick (R12.3 to R12.5) -----------------------------------------------------------


def tick(cursor: dict, active: int = 0):
    return plan_launch(cursor, validate(cursor), active)


def test_range_tick_launches_available_runs_and_advances_the_cursor():
    cursor = {**W, "range_start": 1, "range_end": 5000, "chunk_size": 1000, "max_concurrent_jobs": 3}
    launch = tick(cursor, active=1)
    assert [c.label for c in launch.chunks] == ["1-1000", "1001-2000"]
    assert launch.cursor == {**cursor, "next_chunk_start": 2001}
    assert [c.label for c in tick({**cursor, "range_end": 1500, "next_chunk_start": 1001}).chunks] == [
        "1001-1500"
    ]


def test_list_tick_and_completion():
    cursor = {**W, "team_ids": [10, 20, 30], "chunk_size": 2, "max_concurrent_jobs": 5}
    launch = tick(cursor)
    assert [c.team_ids for c in launch.chunks] == [(10, 20), (30,)]
    assert launch.cursor["next_team_index"] == 3
    done = tick(launch.cursor)
    assert done.chunks == [] and done.skip_reason == "complete: all 3 teams launched"
    assert tick({**W, "range_start": 1, "range_end": 9, "next_chunk_start": 10}).skip_reason == (
        "complete up to range_end 9"
    )


def test_tick_at_max_concurrency_changes_nothing():
    cursor = {**W, "team_ids": [1], "max_concurrent_jobs": 2}
    launch = tick(cursor, active=2)
    assert launch.chunks == [] and launch.cursor == cursor
    assert launch.skip_reason == "at max concurrency: 2 active runs of 2"
    assert tick(cursor, active=7).skip_reason == "at max concurrency: 7 active runs of 2"


# --- --team-ids-from ------------------------------------------------------------------------------


def test_team_ids_from_the_reports_csv(tmp_path: Path, caplog):
    path = tmp_path / "failed.csv"
    path.write_text(
        "team_id,status,error,run_id,step_key,persons_processed,persons_updated,persons_skipped\n"
        '12,failed,"Error: two\nlines, with commas",job-1,teams_1_12,3,1,2\n'
        "40,failed,,job-1,team_40,0,0,0\n"
        "12,failed,again,job-2,team_12,0,0,0\n"
    )
    assert schedule.read_team_ids_csv(path) == [12, 40]
    mixed = tmp_path / "all.csv"
    mixed.write_text("team_id,status\n5,succeeded\n6,failed\n")
    with caplog.at_level(logging.WARNING, logger="runner.schedule"):
        assert schedule.read_team_ids_csv(mixed) == [5, 6]
    assert "lists 1 teams that succeeded ([5])" in caplog.text
    plain = tmp_path / "plain.csv"
    plain.write_text("7\n\n3\n")
    assert schedule.read_team_ids_csv(plain) == [7, 3]
    header_only = tmp_path / "empty.csv"
    header_only.write_text("team_id,status\n")
    assert schedule.read_team_ids_csv(header_only) == []
    bad = tmp_path / "bad.csv"
    bad.write_text("team_id\n1\nabc\n")
    with pytest.raises(ConfigError, match=r"bad.csv line 3: team id must be an integer, got 'abc'"):
        schedule.read_team_ids_csv(bad)
    with pytest.raises(ConfigError, match="cannot read team ids"):
        schedule.read_team_ids_csv(tmp_path / "missing.csv")


def test_semantics_is_accepted_and_reaches_dbt_and_the_schedule_id():
    default = config(range_start=1, range_end=10)
    replay = config(range_start=1, range_end=10, semantics="replay")
    assert default.semantics == "original" and replay.semantics == "replay"
    assert "semantics" not in plan_chunks(default)[0].dbt_vars(default)  # dbt's default: original
    assert plan_chunks(replay)[0].dbt_vars(replay)["semantics"] == "replay"
    assert plan_chunks(replay)[0].run_settings(replay)["semantics"] == "replay"
    assert replay.to_cursor()["semantics"] == "replay"
    assert replay.schedule_id() != default.schedule_id()  # a different computation, its own progress
    assert config(range_start=1, range_end=10, semantics="original").schedule_id() == default.schedule_id()
    for bad in ("Replay", 1, ["replay"]):
        with pytest.raises(ConfigError, match="semantics must be 'original' or 'replay'"):
            config(range_start=1, range_end=10, semantics=bad)


def test_max_rate_reaches_every_apply_of_the_schedule():
    c = config(team_ids=[1, 2], max_rate=250)
    assert c.max_rate == 250.0
    assert plan_chunks(c)[0].run_settings(c)["max_rate"] == 250.0
    assert "max_rate" not in plan_chunks(config(team_ids=[1]))[0].run_settings(config(team_ids=[1]))
    for bad in (0, -1, "10", True):
        with pytest.raises(ConfigError, match="max_rate must be a positive number"):
            config(team_ids=[1], max_rate=bad)
