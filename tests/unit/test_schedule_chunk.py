"""`runner.jobs.chunk_run.apply_chunk` without I/O: slices of teams_per_chunk, applied one at a time on the
embedded engine and up to max_concurrent_tasks at once against a server; a failed build fails the
chunk's known teams (list mode) or the chunk alone (range mode); a dry run records nothing."""

from __future__ import annotations

import threading
import time

import pytest

from runner.config.schedule import validate
from runner.jobs import chunk_run
from runner.jobs.chunk_run import Built, Targets, TeamOutcome, apply_chunk
from runner.rules.scheduling import plan_chunks
from runner.stores.diffs import TeamSummary

W = {"bug_window_start": "2026-01-06 20:01:00", "bug_window_end": "2026-01-07 14:52:00"}


def targets(url: str) -> Targets:
    return Targets(url, "postgresql://unused", "kafka:9092", "topic", "posthog", "recon")


SERVER = targets("http://clickhouse:8123/default")
EMBEDDED = targets("chdb:///tmp/unused")


class Calls:
    def __init__(self) -> None:
        self.failing: set[int] = set()
        self.seconds = 0.0
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.tasks: list[tuple[str, str, list[int]]] = []
        self.recorded: list[tuple[str, list[tuple[int, str]], str]] = []
        self.finished: list[tuple[str, bool]] = []
        self.locked: list[tuple[str, ...]] = []

    def apply_task(self, config, job_id, task, teams, targets, run_config):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.tasks.append((job_id, task, [t.team_id for t in teams]))
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        return [
            TeamOutcome(
                t.team_id, "failed" if t.team_id in self.failing else "succeeded", task, None, 2, 1, 1
            )
            for t in teams
        ]

    def record_failed_teams(self, targets, job_id, run_config, teams, error):
        self.recorded.append((job_id, list(teams), error))

    def finish_run(self, targets, job_id, *, failed):
        self.finished.append((job_id, failed))

    def acquire_job_lock(self, pg_url, command, *job_ids):
        self.locked.append(job_ids)
        return _NoLock()


class _NoLock:
    def release(self) -> None:
        pass


@pytest.fixture
def calls(monkeypatch):
    recorder = Calls()
    monkeypatch.setattr(chunk_run, "apply_task", recorder.apply_task)
    monkeypatch.setattr(chunk_run, "record_failed_teams", recorder.record_failed_teams)
    monkeypatch.setattr(chunk_run, "finish_run", recorder.finish_run)
    monkeypatch.setattr(chunk_run.job_lock, "acquire", recorder.acquire_job_lock)
    return recorder


def built(team_ids: list[int]) -> Built:
    return Built([TeamSummary(t, 5, "single_pass", "inv") for t in team_ids], "inv", 1.5)


def test_server_applies_slices_concurrently_up_to_the_cap(calls):
    calls.seconds, calls.failing = 0.05, {7}
    config = validate(
        {**W, "range_start": 1, "range_end": 100, "teams_per_chunk": 2, "max_concurrent_tasks": 3}
    )
    chunk = plan_chunks(config)[0]
    result = apply_chunk(config, chunk, "job-1", built([9, 1, 7, 3, 5, 11, 13, 15]), SERVER, "sched-x")
    assert calls.peak == 3
    assert sorted(task for _, task, _ in calls.tasks) == sorted(
        ["teams_1_3", "teams_5_7", "teams_9_11", "teams_13_15"]
    )
    assert [t.team_id for t in result.teams] == [1, 3, 5, 7, 9, 11, 13, 15]  # slice order kept
    assert result.status == "failed" and [t.team_id for t in result.failed_teams] == [7]
    assert result.error == "1 of 8 teams failed: [7]"
    assert calls.finished == [("job-1", True)]
    assert calls.locked == [("job-1",)]  # one job lock for the chunk, shared by its concurrent slices
    assert result.to_json()["failed_team_ids"] == "[7]" and result.to_json()["persons_updated"] == 8
    assert result.build_seconds == 1.5 and result.duration_seconds >= 1.5


def test_embedded_applies_one_slice_at_a_time(calls):
    calls.seconds = 0.02
    config = validate({**W, "team_ids": [1, 2, 3, 4], "teams_per_chunk": 1, "max_concurrent_tasks": 10})
    result = apply_chunk(config, plan_chunks(config)[0], "job-2", built([1, 2, 3, 4]), EMBEDDED)
    assert calls.peak == 1 and [task for _, task, _ in calls.tasks] == [
        "team_1",
        "team_2",
        "team_3",
        "team_4",
    ]
    assert result.status == "succeeded" and calls.finished == [("job-2", False)]


def test_failed_build_in_list_mode_fails_each_known_team(calls):
    config = validate({**W, "team_ids": [4, 2, 9], "exclude_team_ids": [9], "teams_per_chunk": 5})
    failed = Built([], None, 3.0, error="DbtFailed: dbt run failed: boom")
    result = apply_chunk(config, plan_chunks(config)[0], "job-3", failed, SERVER)
    assert (
        result.status == "build_failed"
        and result.error == "dbt build failed: DbtFailed: dbt run failed: boom"
    )
    assert [(t.team_id, t.status, t.task) for t in result.teams] == [
        (2, "failed", "teams_2_4"),
        (4, "failed", "teams_2_4"),
    ]
    assert calls.recorded == [("job-3", [(2, "teams_2_4"), (4, "teams_2_4")], result.error)]
    assert calls.tasks == [] and calls.finished == []


def test_failed_build_in_range_mode_fails_the_chunk(calls):
    config = validate({**W, "range_start": 1, "range_end": 10})
    result = apply_chunk(config, plan_chunks(config)[0], "job-4", Built([], None, 0.1, error="x"), SERVER)
    assert result.status == "build_failed" and result.teams == []
    assert calls.recorded == [("job-4", [], "dbt build failed: x")]


def test_dry_run_records_nothing(calls):
    config = validate({**W, "range_start": 1, "range_end": 10, "dry_run": True})
    chunk = plan_chunks(config)[0]
    apply_chunk(config, chunk, "job-5", built([1, 2]), SERVER)
    apply_chunk(config, chunk, "job-5", Built([], None, 0.1, error="x"), SERVER)
    assert calls.recorded == [] and calls.finished == []


def test_nothing_selected_is_a_success_without_a_run(calls):
    config = validate({**W, "range_start": 1, "range_end": 10})
    result = apply_chunk(config, plan_chunks(config)[0], "job-6", built([]), SERVER)
    assert result.status == "succeeded" and result.teams == [] and calls.finished == []
