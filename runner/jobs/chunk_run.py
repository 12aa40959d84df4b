"""One chunk of a schedule: build its diff with dbt, apply its teams, record every team in the ledger.

This is the function `runner schedule` runs per chunk and the Dagster job runs per op; it keeps no
state between chunks: each call opens its own connections and reads everything it needs from its
arguments and the environment.

- **build**: `dbt run` in this process (`runner.jobs.dbt.run_dbt`) with the chunk's team filter. The
  teams to apply are the summary rows this build wrote (same dbt invocation id) that belong to the
  chunk, so teams of other chunks or earlier builds are never picked up.
- **apply**: the teams in tasks of `teams_per_chunk` (R11.1), each a `runner.jobs.apply.Applier` run
  under the chunk's job id, so ledger rows, backups and the outbox all carry it; tasks run one after
  another on the embedded engine and up to `max_concurrent_tasks` at once against a server.
- **ledger**: the applier records each team it starts. Teams it could not start (dbt failed, the
  outbox backlog could not be published, the applier crashed) are recorded here as failed, so every
  team of a chunk has an outcome in `recon_run_team`. When dbt fails for a range chunk its teams are
  unknown; the chunk itself is then the failure (see `runner.jobs.schedule`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import clickhouse_connect
import psycopg
from clickhouse_connect.driver.client import Client

from runner.config import settings
from runner.config.schedule import ScheduleConfig
from runner.jobs.apply import SUCCESS, Applier, ApplyConfig, PersonResult, RunResult, TeamResult
from runner.rules.scheduling import Chunk, task_slices
from runner.stores import diffs, job_lock, ledger, warehouse
from runner.stores.publisher import Publisher

log = logging.getLogger("runner.schedule")

SUCCEEDED = ledger.SUCCEEDED
FAILED = ledger.FAILED
BUILD_FAILED = "build_failed"
# Another process held the chunk's job id: nothing was written; the next invocation runs the chunk.
JOB_LOCKED = "job_locked"


# --- where things are ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Targets:
    """Addresses a chunk needs, resolved from the environment (nothing opened)."""

    clickhouse_url: str
    pg_url: str
    kafka_bootstrap: str | None
    topic: str
    source_database: str
    target_schema: str

    @property
    def embedded(self) -> bool:
        return warehouse.is_embedded(self.clickhouse_url)

    @classmethod
    def resolve(cls, config: ScheduleConfig) -> Targets:
        found = settings.targets(config.persons_db_env_var)  # all production settings or none
        if not config.dry_run and not found.kafka:
            settings.kafka_bootstrap()  # raises, naming what to set
        return cls(
            clickhouse_url=found.clickhouse,
            pg_url=persons_db_url(config),
            kafka_bootstrap=None if config.dry_run else found.kafka,
            topic=settings.person_topic(),
            source_database=settings.source_database(),
            target_schema=settings.target_schema(),
        )

    def clickhouse(self) -> Client:
        """The embedded engine is shared by the whole process; against a server every caller gets a
        client (and session) of its own, so concurrent tasks never share a session."""
        if self.embedded:
            return warehouse.client(self.clickhouse_url)
        return clickhouse_connect.get_client(dsn=self.clickhouse_url)


def persons_db_url(config: ScheduleConfig) -> str:
    """From the variable the cursor names (`persons_db_env_var`, R12.6; default PERSONS_DB_WRITER_URL,
    which falls back to the local stack)."""
    if config.persons_db_env_var != settings.ENV_PERSONS_DB:
        url = os.environ.get(config.persons_db_env_var)
        if not url:
            raise settings.ConfigError(
                f"environment variable {config.persons_db_env_var} (persons_db_env_var) is not set"
            )
        return url
    found = settings.persons_db_url()
    assert found is not None
    return found


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeamOutcome:
    team_id: int
    status: str
    task: str
    error: str | None = None
    processed: int = 0
    updated: int = 0
    skipped: int = 0
    would_update: int = 0

    @classmethod
    def from_result(cls, team: TeamResult, task: str) -> TeamOutcome:
        return cls(
            team_id=team.team_id,
            status=team.status,
            task=task,
            error=team.error,
            processed=team.processed,
            updated=team.updated,
            skipped=team.skipped,
            would_update=team.outcomes.get(SUCCESS, 0),
        )

    def to_json(self) -> dict[str, Any]:
        """R11.6 `teams_results` entry."""
        entry: dict[str, Any] = {
            "team_id": self.team_id,
            "status": "success" if self.status == SUCCEEDED else "failed",
            "persons_processed": self.processed,
            "persons_updated": self.updated,
            "persons_skipped": self.skipped,
        }
        if self.status != SUCCEEDED:
            entry["error"] = self.error or ""
        return entry


@dataclass
class Built:
    """What a chunk's dbt build selected."""

    teams: list[diffs.TeamSummary]
    invocation_id: str | None
    duration_seconds: float
    error: str | None = None


@dataclass
class ChunkResult:
    chunk: Chunk
    job_id: str
    status: str
    dry_run: bool
    teams: list[TeamOutcome] = field(default_factory=list)
    error: str | None = None
    build_seconds: float = 0.0
    duration_seconds: float = 0.0

    @property
    def failed_teams(self) -> list[TeamOutcome]:
        return [t for t in self.teams if t.status != SUCCEEDED]

    def total(self, attribute: str) -> int:
        return sum(getattr(t, attribute) for t in self.teams)

    def to_json(self) -> dict[str, Any]:
        """The original's chunk result (R11.6) plus where it ran."""
        ids = [t.team_id for t in self.teams]
        failed = [t.team_id for t in self.failed_teams]
        return {
            "job_id": self.job_id,
            "chunk": self.chunk.key(),
            "status": self.status,
            "dry_run": self.dry_run,
            "error": self.error,
            "team_ids": str(ids),
            "teams_count": len(ids),
            "teams_succeeded": len(ids) - len(failed),
            "teams_failed": len(failed),
            "failed_team_ids": str(failed),
            "persons_processed": self.total("processed"),
            "persons_updated": self.total("updated"),
            "persons_skipped": self.total("skipped"),
            "persons_would_update": self.total("would_update") if self.dry_run else 0,
            "teams_results": [t.to_json() for t in self.teams],
            "build_seconds": round(self.build_seconds, 3),
            "duration_seconds": round(self.duration_seconds, 3),
        }


# --- build -----------------------------------------------------------------------------------------


DbtInvoker = Callable[[dict[str, Any]], str]


def dbt_in_process(extra: list[str] | None = None) -> DbtInvoker:
    """`dbt run` in this process; returns the dbt invocation id. With the embedded engine this is the
    only way (one process per engine path). dbt's log lines go to stderr: stdout is for results."""

    def invoke(dbt_vars: dict[str, Any]) -> str:
        from dbt_common.invocation import get_invocation_id

        from runner.jobs.dbt import run_dbt

        with contextlib.redirect_stdout(sys.stderr):
            run_dbt("run", dbt_vars, extra)
        return get_invocation_id()

    return invoke


def chunk_target_path(chunk: Chunk) -> Path:
    """Where a chunk's dbt build keeps its artifacts: a directory per chunk, so each chunk's parsed
    project (partial parsing) stays warm from one schedule run to the next. In one directory, chunks
    with different team filters would make dbt parse the whole project again for every chunk (it
    hashes `--vars` into its partial-parsing state)."""
    return settings.project_dir() / "target" / "schedule" / chunk.key()


def build_chunk(
    config: ScheduleConfig, chunk: Chunk, targets: Targets, dbt: DbtInvoker | None = None
) -> Built:
    """`dbt run` for the chunk's teams (by default in this process); never raises: a failure is
    returned in `Built.error`."""
    started = time.monotonic()
    source = targets.source_database if targets.source_database != settings.DEFAULT_SOURCE_DB else None
    dbt_vars = chunk.dbt_vars(config, source)
    log.info("Chunk %s: dbt run with vars %s", chunk.key(), dbt_vars)
    try:
        invocation_id = (dbt or dbt_in_process(["--target-path", str(chunk_target_path(chunk))]))(dbt_vars)
        summaries = diffs.read_team_summaries(targets.clickhouse(), targets.target_schema)
    except Exception as exc:  # noqa: BLE001 - a failed build fails the chunk, not the schedule
        log.exception("Chunk %s: build failed", chunk.key())
        return Built([], None, time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
    mine = [s for s in summaries if chunk.selects(s.team_id, config.exclude_team_ids)]
    teams = [s for s in mine if s.invocation_id == invocation_id]
    if mine and not teams:
        return Built(
            [],
            invocation_id,
            time.monotonic() - started,
            error=f"the diff summary has no row of dbt invocation {invocation_id} for this chunk's teams "
            f"(found invocation ids {sorted({s.invocation_id for s in mine})[:3]})",
        )
    log.info(
        "Chunk %s: %d teams selected (first: %s), %d persons with diffs",
        chunk.key(),
        len(teams),
        [t.team_id for t in teams[:10]],
        sum(t.persons_with_diff for t in teams),
    )
    return Built(teams, invocation_id, time.monotonic() - started)


# --- apply -----------------------------------------------------------------------------------------


class _QuietSink:
    """The scheduler reports per chunk and per team; person-level lines are not kept."""

    def run_started(self, job_id: str, dry_run: bool, teams: Sequence[diffs.TeamSummary]) -> None:
        pass

    def stage(self, result: PersonResult) -> None:
        pass

    def batch_closed(self) -> None:
        pass

    def batch_failed(self) -> None:
        pass

    def team_finished(self, team: TeamResult) -> None:
        pass

    def run_finished(self, run: RunResult) -> None:
        pass


def ledger_config(config: ScheduleConfig, chunk: Chunk, schedule_id: str | None) -> dict[str, Any]:
    return {"schedule_id": schedule_id, "chunk": chunk.key(), **chunk.run_settings(config)}


def record_failed_teams(
    targets: Targets,
    job_id: str,
    run_config: dict[str, Any],
    teams: Sequence[tuple[int, str]],
    error: str,
) -> None:
    """Ledger rows for teams that failed before the applier could start them: (team_id, task id)."""
    try:
        with psycopg.connect(targets.pg_url, autocommit=True) as conn:
            ledger.start_run(conn, job_id, "apply", run_config)
            for team_id, task in teams:
                ledger.start_team(conn, job_id, team_id, task)
                ledger.finish_team(
                    conn,
                    job_id,
                    team_id,
                    status=FAILED,
                    error=error,
                    processed=0,
                    updated=0,
                    skipped=0,
                    outcomes={},
                    commits=0,
                    duration_seconds=0.0,
                )
            ledger.finish_run(conn, job_id, FAILED)
    except Exception:  # noqa: BLE001 - the caller still reports the failure
        log.exception("Job %s: could not record failed teams in the ledger", job_id)


def apply_task(
    config: ScheduleConfig,
    job_id: str,
    task: str,
    teams: list[diffs.TeamSummary],
    targets: Targets,
    run_config: dict[str, Any],
) -> list[TeamOutcome]:
    apply_config = ApplyConfig(
        job_id=job_id,
        dry_run=config.dry_run,
        batch_size=config.batch_size,
        backup=config.backup_enabled,
        max_rate=config.max_rate,
        person_details=0,  # the quiet sink shows no person: no before/after texts from the set write
    )
    try:
        publisher = None
        if not config.dry_run:
            assert targets.kafka_bootstrap is not None
            publisher = Publisher(
                targets.kafka_bootstrap, targets.topic, timeout=apply_config.publish_timeout
            )
        applier = Applier(
            apply_config,
            clickhouse=targets.clickhouse(),
            pg_url=targets.pg_url,
            source_database=targets.source_database,
            target_schema=targets.target_schema,
            publisher=publisher,
            sink=_QuietSink(),
        )
        run = applier.run(teams)
    except Exception as exc:  # noqa: BLE001 - one task's crash fails its teams, not the chunk's others
        log.exception("Job %s task %s failed", job_id, task)
        error = f"{type(exc).__name__}: {exc}"
        if not config.dry_run:
            record_failed_teams(targets, job_id, run_config, [(t.team_id, task) for t in teams], error)
        return [TeamOutcome(t.team_id, FAILED, task, error) for t in teams]
    if run.error and not config.dry_run:
        # The applier did not start these teams (e.g. an earlier run's messages could not be published).
        record_failed_teams(targets, job_id, run_config, [(t.team_id, task) for t in run.teams], run.error)
    return [TeamOutcome.from_result(t, task) for t in run.teams]


def finish_run(targets: Targets, job_id: str, *, failed: bool) -> None:
    """Each task's applier closed the run with its own status; the run gets the status of all its
    tasks."""
    try:
        with psycopg.connect(targets.pg_url, autocommit=True) as conn:
            ledger.finish_run(conn, job_id, FAILED if failed else SUCCEEDED)
    except psycopg.Error:
        log.exception("Job %s: could not record the run's status", job_id)


def apply_chunk(
    config: ScheduleConfig,
    chunk: Chunk,
    job_id: str,
    built: Built,
    targets: Targets,
    schedule_id: str | None = None,
) -> ChunkResult:
    """Apply what `build_chunk` selected (or record its failure). Never raises for a team's failure."""
    started = time.monotonic()
    run_config = ledger_config(config, chunk, schedule_id)
    result = ChunkResult(chunk, job_id, SUCCEEDED, config.dry_run, build_seconds=built.duration_seconds)
    if built.error is not None:
        result.status, result.error = BUILD_FAILED, f"dbt build failed: {built.error}"
        if chunk.team_ids is not None:
            # The chunk's teams are known: each gets the build's error (mode A).
            listed = [t for t in chunk.team_ids if t not in config.exclude_team_ids]
            slices = task_slices(listed, config.teams_per_chunk)
            members = [(team, task) for task, ids in slices for team in ids]
            result.teams = [TeamOutcome(team, FAILED, task, result.error) for team, task in members]
            if not config.dry_run:
                record_failed_teams(targets, job_id, run_config, members, result.error)
        elif not config.dry_run:
            record_failed_teams(targets, job_id, run_config, [], result.error)
        result.duration_seconds = built.duration_seconds + time.monotonic() - started
        return result

    by_id = {t.team_id: t for t in built.teams}
    tasks = task_slices(list(by_id), config.teams_per_chunk)
    concurrent = not targets.embedded and config.max_concurrent_tasks > 1 and len(tasks) > 1
    lock = None
    if tasks and not config.dry_run:
        # One process per job id, as `runner apply` and `runner restore` (issue 13): a manual apply or
        # restore of this chunk's job id must not run while the schedule writes it. The chunk's slices
        # share the lock (they run in this process).
        try:
            lock = job_lock.acquire(targets.pg_url, "schedule", job_id)
        except settings.ConfigError as exc:
            members = [(team, task_id) for task_id, ids in tasks for team in ids]
            result.teams = [TeamOutcome(team, FAILED, task, str(exc)) for team, task in members]
            result.status, result.error = JOB_LOCKED, str(exc)
            log.error("Job %s: %s", job_id, exc)
            result.duration_seconds = built.duration_seconds + time.monotonic() - started
            return result

    def run_task(task: tuple[str, list[int]]) -> list[TeamOutcome]:
        task_id, ids = task
        return apply_task(config, job_id, task_id, [by_id[t] for t in ids], targets, run_config)

    try:
        if concurrent:
            with ThreadPoolExecutor(min(config.max_concurrent_tasks, len(tasks)), "recon-task") as pool:
                outcomes = list(pool.map(run_task, tasks))
        else:
            outcomes = [run_task(task) for task in tasks]
    finally:
        if lock is not None:
            lock.release()
    result.teams = [o for task_outcomes in outcomes for o in task_outcomes]
    if result.failed_teams:
        result.status = FAILED
        failed_ids = [t.team_id for t in result.failed_teams]
        result.error = f"{len(failed_ids)} of {len(result.teams)} teams failed: {failed_ids[:20]}"
    if tasks and not config.dry_run:
        finish_run(targets, job_id, failed=bool(result.failed_teams))
    result.duration_seconds = built.duration_seconds + time.monotonic() - started
    return result


def run_chunk(
    config: ScheduleConfig, chunk: Chunk, job_id: str, targets: Targets, schedule_id: str | None = None
) -> ChunkResult:
    """Build, then apply, one chunk."""
    built = build_chunk(config, chunk, targets)
    return apply_chunk(config, chunk, job_id, built, targets, schedule_id)
