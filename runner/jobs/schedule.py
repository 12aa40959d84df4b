"""`runner schedule`'s job: the whole reconciliation over many teams, in chunks, with bounded concurrency;
resumable.

The configuration (`runner.config.schedule`) is split into chunks (`runner.rules.scheduling`); each
chunk is built by dbt for its teams and applied under its own job id `<schedule id>-<chunk>`
(`runner.jobs.chunk_run`), so every team's outcome lands in the run ledger and `runner report` finds it.

Progress lives in Postgres (`runner.stores.schedules`), keyed by the schedule id. A chunk is recorded
when it *finishes* (the original recorded launches, R12.7), so a killed invocation loses only its
unfinished chunks: invoking the same configuration again runs exactly the chunks without a record. A
finished chunk is never run again, even if some of its teams failed; a chunk whose dbt build failed
applied nothing and is tried again. One process at a time runs a schedule (a Postgres advisory lock).

Concurrency: dbt builds run one after another in this thread (concurrent builds of the same
incremental models collide on their intermediate tables); applies overlap in worker threads, up to
`max_concurrent_jobs` chunks in flight against a ClickHouse server, one at a time on the embedded
engine (one process per engine path).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg

from runner.config import faults, settings
from runner.config.schedule import ScheduleConfig
from runner.config.settings import ConfigError
from runner.jobs.chunk_run import (
    BUILD_FAILED,
    FAILED,
    SUCCEEDED,
    Built,
    ChunkResult,
    Targets,
    apply_chunk,
    build_chunk,
    persons_db_url,
)
from runner.rules import scheduling
from runner.rules.scheduling import Chunk
from runner.stores import outbox
from runner.stores.pg_schema import check_postgres
from runner.stores.publisher import check_broker
from runner.stores.schedules import ChunkRecord, Progress, read_progress

# Finished chunks (never run again); build failures applied nothing and are retried.
FINAL_STATUSES = (SUCCEEDED, FAILED)
# `--plan` lists at most this many chunks; the rest is counted (a range may hold billions of chunks).
PLAN_LISTED = 1000

T = TypeVar("T")


def run_pipeline(
    chunks: Iterable[Chunk],
    build: Callable[[Chunk], T],
    finish: Callable[[Chunk, T], ChunkResult],
    on_done: Callable[[ChunkResult], None],
    *,
    max_in_flight: int,
) -> None:
    """Build chunks one after another in this thread; finish (apply) them in up to `max_in_flight`
    worker threads, counting the chunk being built. `on_done` runs in this thread as chunks finish.
    With `max_in_flight` 1 everything runs in this thread, one chunk after the other."""
    if max_in_flight <= 1:
        for chunk in chunks:
            on_done(finish(chunk, build(chunk)))
        return
    with ThreadPoolExecutor(max_in_flight - 1, "recon-chunk") as pool:
        in_flight: set[Future[ChunkResult]] = set()

        def settle(block_until_below: int) -> None:
            nonlocal in_flight
            while len(in_flight) >= block_until_below:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    on_done(future.result())

        for chunk in chunks:
            settle(max_in_flight)  # the build below is one of the chunks in flight
            built = build(chunk)
            in_flight.add(pool.submit(finish, chunk, built))
        settle(1)


def preflight(config: ScheduleConfig, targets: Targets) -> None:
    """Everything that would make the whole schedule fail: exit 2 before anything is written."""
    project = settings.project_dir()
    if not (project / "dbt_project.yml").exists():
        raise ConfigError(f"no dbt project at {project} (dbt_project.yml missing; set RECON_PROJECT_DIR)")
    check_postgres(targets.pg_url)
    with psycopg.connect(targets.pg_url, connect_timeout=10) as conn:
        row = conn.execute("SELECT to_regclass('recon_schedule_chunk')").fetchone()
    if not row or row[0] is None:
        raise ConfigError("recon's schedule tables are missing in Postgres: run `runner db migrate`")
    if not config.dry_run:
        assert targets.kafka_bootstrap is not None
        check_broker(targets.kafka_bootstrap, targets.topic)


def chunk_record(result: ChunkResult) -> ChunkRecord:
    return ChunkRecord(
        job_id=result.job_id,
        chunk=result.chunk,
        status=result.status,
        error=result.error,
        teams_succeeded=len(result.teams) - len(result.failed_teams),
        teams_failed=len(result.failed_teams),
        persons_processed=result.total("processed"),
        persons_updated=result.total("updated"),
        persons_skipped=result.total("skipped"),
        duration_seconds=result.duration_seconds,
    )


@dataclass
class ScheduleRun:
    """One invocation of a schedule."""

    schedule_id: str
    config: ScheduleConfig
    chunks: int  # in the whole plan
    finished_before: int = 0  # chunks finished by earlier invocations
    results: list[ChunkResult] = field(default_factory=list)  # chunks run by this invocation
    earlier_failed: list[str] = field(default_factory=list)  # job ids: finished earlier, teams failed
    quarantined: int = 0  # outbox messages of the schedule (every invocation's) quarantined

    @property
    def to_run(self) -> int:
        return max(0, self.chunks - self.finished_before)

    def summary(self) -> dict[str, Any]:
        """The schedule's outcome (the summary JSON line)."""
        teams = [t for r in self.results for t in r.teams]
        failed_ids = sorted(t.team_id for t in teams if t.status != SUCCEEDED)
        dry_run = self.config.dry_run
        return {
            "type": "summary",
            "schedule_id": self.schedule_id,
            "dry_run": dry_run,
            "chunks_run": len(self.results),
            "chunks_finished_earlier": self.finished_before,
            "chunks_failed": sum(r.status != SUCCEEDED for r in self.results),
            "chunks_build_failed": [r.job_id for r in self.results if r.status == BUILD_FAILED],
            "chunks_failed_earlier": self.earlier_failed,
            "teams": len(teams),
            "teams_succeeded": len(teams) - len(failed_ids),
            "teams_failed": len(failed_ids),
            "failed_team_ids": failed_ids,
            "persons_processed": sum(t.processed for t in teams),
            "persons_updated": sum(t.updated for t in teams),
            "persons_skipped": sum(t.skipped for t in teams),
            "persons_would_update": sum(t.would_update for t in teams) if dry_run else 0,
            "quarantined_messages": self.quarantined,
        }

    @property
    def failed(self) -> bool:
        """Chunks finished by earlier invocations count too: the exit code describes the whole schedule.
        Quarantined messages fail no team, but the schedule is not done until they are retried or
        discarded."""
        summary = self.summary()
        return bool(
            summary["failed_team_ids"]
            or summary["chunks_build_failed"]
            or self.earlier_failed
            or self.quarantined
        )


def run_schedule(
    config: ScheduleConfig,
    schedule_id: str,
    targets: Targets,
    on_start: Callable[[ScheduleRun], None],
    on_chunk: Callable[[ChunkResult, int, int], None],
) -> ScheduleRun:
    """Run the chunks without a final record. `on_start` gets the run before the first chunk,
    `on_chunk` each chunk's result, position (1-based, in the whole plan) and the plan's chunk count
    as it finishes."""
    run = ScheduleRun(schedule_id, config, scheduling.chunk_count(config))
    progress = Progress(targets.pg_url, schedule_id)
    try:
        if not config.dry_run:
            progress.lock()
            progress.register(config, run.chunks)
        done = progress.finished()
        run.finished_before = sum(status in FINAL_STATUSES for status in done.values())
        positions: dict[str, int] = {}  # chunks in flight only

        def pending() -> Iterator[Chunk]:
            for position, (chunk, _) in enumerate(scheduling.iter_chunks(config), start=1):
                if done.get(chunk.job_id(schedule_id)) not in FINAL_STATUSES:
                    positions[chunk.job_id(schedule_id)] = position
                    yield chunk

        on_start(run)

        def on_done(result: ChunkResult) -> None:
            if not config.dry_run:
                progress.record(chunk_record(result))
            run.results.append(result)
            on_chunk(result, positions.pop(result.job_id), run.chunks)
            faults.point("schedule_chunk_recorded")

        def build(chunk: Chunk) -> Built:
            return build_chunk(config, chunk, targets)

        def finish(chunk: Chunk, built: Built) -> ChunkResult:
            return apply_chunk(config, chunk, chunk.job_id(schedule_id), built, targets, schedule_id)

        run_pipeline(
            pending(),
            build,
            finish,
            on_done,
            max_in_flight=1 if targets.embedded else config.max_concurrent_jobs,
        )
    finally:
        progress.close()
    if not config.dry_run:
        run.earlier_failed = sorted(job for job, status in done.items() if status == FAILED)
        with psycopg.connect(targets.pg_url, connect_timeout=10) as conn:
            run.quarantined = outbox.schedule_quarantined(conn, schedule_id)
    return run


@dataclass(frozen=True)
class Plan:
    """`--plan`: the first `PLAN_LISTED` chunks with their job ids and statuses, the rest counted."""

    chunks: int
    listed: list[dict[str, Any]]  # chunk_plan records, then a chunk_plan_more record if there are more
    progress_note: str = ""  # why the progress is unknown, if it is


def plan(config: ScheduleConfig, schedule_id: str) -> Plan:
    total = scheduling.chunk_count(config)  # the plan itself is generated lazily, chunk by chunk
    done: dict[str, str] = {}
    note = ""
    try:
        done = read_progress(persons_db_url(config), schedule_id)
    except (ConfigError, psycopg.Error) as exc:
        note = f"progress unknown: {str(exc).splitlines()[0]}"
    records: list[dict[str, Any]] = []
    for i, (chunk, _) in enumerate(scheduling.iter_chunks(config), start=1):
        if i > PLAN_LISTED:
            finished = sum(status in FINAL_STATUSES for status in done.values())
            records.append(
                {"type": "chunk_plan_more", "chunks": total - PLAN_LISTED, "finished_in_all": finished}
            )
            break
        job_id = chunk.job_id(schedule_id)
        records.append(
            {
                "type": "chunk_plan",
                "position": i,
                "job_id": job_id,
                "status": done.get(job_id, "pending"),
                **chunk.to_json(),
            }
        )
    return Plan(total, records, note)
