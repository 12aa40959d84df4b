"""`runner schedule`: the whole job over many teams, in chunks, with bounded concurrency; resumable.

The configuration is the original sensor's JSON cursor (`runner.config.schedule`). The teams are
split into chunks (`runner.rules.scheduling`: `chunk_size` teams of the list, or sub-ranges of team
ids); each chunk is built by dbt for its teams and applied under its own job id
`<schedule id>-<chunk>` (`runner.jobs.chunk_run`), so every team's outcome lands in the run ledger
and `runner report` finds it.

Progress lives in Postgres (`recon_schedule`, `recon_schedule_chunk`), keyed by the schedule id (derived
from the configuration, or `--schedule-id`). A chunk is recorded when it *finishes* (the original
recorded launches, R12.7), so a killed invocation loses only its unfinished chunks: invoking the same
configuration again runs exactly the chunks without a record. A finished chunk is never run again,
even if some of its teams failed (find those with `runner report` and re-run them, typically in
windowed mode, with `--team-ids-from`); a chunk whose dbt build failed applied nothing and is tried
again. One process at a time runs a schedule (a Postgres advisory lock).

Concurrency:
- embedded ClickHouse (chDB): one process per engine path, so chunks run one at a time in this
  process: dbt in-process, then apply; the caps do not apply.
- ClickHouse server: dbt builds still run one at a time in this process, because concurrent dbt runs
  of the same incremental models collide on their intermediate tables; applies overlap: up to
  `max_concurrent_jobs` chunks in flight, each applying up to `max_concurrent_tasks` teams slices at
  once (threads; every task has its own connections).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import psycopg

from runner.commands import options
from runner.config import faults, settings
from runner.config.schedule import ScheduleConfig, load_files
from runner.config.settings import ConfigError
from runner.jobs.chunk_run import (
    BUILD_FAILED,
    FAILED,
    JOB_LOCKED,
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

log = logging.getLogger("runner.commands.schedule")

_SCHEDULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")  # fullmatch: no trailing newline
# Finished chunks (never run again); build failures applied nothing and are retried.
FINAL_STATUSES = (SUCCEEDED, FAILED)


# --- progress --------------------------------------------------------------------------------------


class Progress:
    """The schedule's rows in Postgres, on one autocommit connection that also holds its lock."""

    def __init__(self, pg_url: str, schedule_id: str):
        self.pg_url = pg_url
        self.schedule_id = schedule_id
        self.locked = False
        self.conn = psycopg.connect(pg_url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def lock(self) -> None:
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", ("recon_schedule:" + self.schedule_id,)
        ).fetchone()
        if not row or not row[0]:
            raise ConfigError(f"schedule {self.schedule_id} is being run by another process; wait for it")
        self.locked = True

    def _reconnect(self) -> None:
        """After a lost connection (a chunk can take hours): a new session, and the lock again."""
        log.warning("Schedule %s: Postgres connection lost; reconnecting", self.schedule_id)
        self.conn.close()
        self.conn = psycopg.connect(self.pg_url, autocommit=True)
        if self.locked:
            self.lock()

    def register(self, config: ScheduleConfig, chunks: int) -> None:
        """Create the schedule's row, or check that an existing one computes the same thing."""
        document = {"identity": config.identity(), "cursor": config.to_cursor()}
        row = self.conn.execute(
            "SELECT config FROM recon_schedule WHERE schedule_id = %s", (self.schedule_id,)
        ).fetchone()
        if row is not None and row[0].get("identity") != config.identity():
            raise ConfigError(
                f"schedule {self.schedule_id} was created with another configuration "
                f"({json.dumps(row[0].get('identity'), sort_keys=True)}); use another --schedule-id"
            )
        self.conn.execute(
            """
            INSERT INTO recon_schedule (schedule_id, config, chunks) VALUES (%s, %s, %s)
            ON CONFLICT (schedule_id) DO UPDATE
            SET config = EXCLUDED.config, chunks = EXCLUDED.chunks, updated_at = now()
            """,
            (self.schedule_id, json.dumps(document), chunks),
        )

    def finished(self) -> dict[str, str]:
        """job id -> status of the chunks recorded so far."""
        return dict(
            self.conn.execute(
                "SELECT job_id, status FROM recon_schedule_chunk WHERE schedule_id = %s", (self.schedule_id,)
            ).fetchall()
        )

    def record(self, result: ChunkResult) -> None:
        try:
            self._record(result)
        except psycopg.OperationalError:
            self._reconnect()
            self._record(result)

    def _record(self, result: ChunkResult) -> None:
        chunk = result.chunk
        self.conn.execute(
            """
            INSERT INTO recon_schedule_chunk (
                job_id, schedule_id, chunk, team_ids, min_team_id, max_team_id, status, error,
                teams_succeeded, teams_failed, persons_processed, persons_updated, persons_skipped,
                duration_seconds)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (job_id) DO UPDATE SET
                status = EXCLUDED.status, error = EXCLUDED.error,
                teams_succeeded = EXCLUDED.teams_succeeded, teams_failed = EXCLUDED.teams_failed,
                persons_processed = EXCLUDED.persons_processed, persons_updated = EXCLUDED.persons_updated,
                persons_skipped = EXCLUDED.persons_skipped, duration_seconds = EXCLUDED.duration_seconds,
                finished_at = now()
            """,
            (
                result.job_id,
                self.schedule_id,
                chunk.key(),
                list(chunk.team_ids) if chunk.team_ids is not None else None,
                chunk.min_team_id,
                chunk.max_team_id,
                result.status,
                result.error,
                len(result.teams) - len(result.failed_teams),
                len(result.failed_teams),
                result.total("processed"),
                result.total("updated"),
                result.total("skipped"),
                result.duration_seconds,
            ),
        )
        self.conn.execute(
            "UPDATE recon_schedule SET updated_at = now() WHERE schedule_id = %s", (self.schedule_id,)
        )


def read_progress(pg_url: str, schedule_id: str) -> dict[str, str]:
    """Recorded chunks of a schedule, for `--plan` and dry runs (no lock, nothing written)."""
    progress = Progress(pg_url, schedule_id)
    try:
        return progress.finished()
    finally:
        progress.close()


# --- running chunks --------------------------------------------------------------------------------

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


# --- output ----------------------------------------------------------------------------------------


class Reporter:
    """Human lines or JSON lines on stdout; logs stay on stderr."""

    def __init__(self, out: IO[str], as_json: bool):
        self.out = out
        self.as_json = as_json

    def emit(self, record: dict[str, Any], text: str) -> None:
        self.out.write((json.dumps(record) if self.as_json else text) + "\n")
        self.out.flush()

    def chunk(self, result: ChunkResult, position: int, total: int) -> None:
        ok = len(result.teams) - len(result.failed_teams)
        persons = _persons_text(result.dry_run, result.teams)
        text = (
            f"chunk {position}/{total} {result.chunk.describe()} (job {result.job_id}): "
            f"{_plural(len(result.teams), 'team')}, {ok} succeeded, {len(result.failed_teams)} failed; "
            f"{persons} "
            f"({result.duration_seconds:.1f}s, dbt {result.build_seconds:.1f}s)"
        )
        if result.status in (BUILD_FAILED, JOB_LOCKED):
            text += f"\n  chunk failed: {result.error}"
        else:
            for team in result.failed_teams:
                text += f"\n  team {team.team_id} failed: {_first_line(team.error)}"
        self.emit({"type": "chunk", "position": position, "chunks": total, **result.to_json()}, text)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


def _persons_text(dry_run: bool, teams: Sequence[Any]) -> str:
    processed = sum(t.processed for t in teams)
    if dry_run:
        return f"persons processed={processed} would_update={sum(t.would_update for t in teams)}"
    return (
        f"persons processed={processed} updated={sum(t.updated for t in teams)} "
        f"skipped={sum(t.skipped for t in teams)}"
    )


def engine_note(targets: Targets, config: ScheduleConfig) -> str:
    if targets.embedded:
        return (
            "engine: embedded ClickHouse (chDB), one process per engine path: chunks run one at a time in "
            "this process (dbt in-process, then apply); max_concurrent_jobs and max_concurrent_tasks "
            "do not apply"
        )
    return (
        "engine: ClickHouse server: dbt builds run one at a time in this process (concurrent builds of "
        f"the same models would collide); applies overlap: up to {config.max_concurrent_jobs} chunks, "
        f"{config.max_concurrent_tasks} team slices per chunk"
    )


# --- command ---------------------------------------------------------------------------------------


def _preflight(config: ScheduleConfig, targets: Targets) -> None:
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


@click.command("schedule")
@click.option(
    "--config",
    "config_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="RECON_SCHEDULE_CONFIG",
    show_envvar=True,
    help="The original sensor cursor as a JSON file: team_ids or range_start/range_end, chunk_size, "
    "max_concurrent_jobs (<= 50), max_concurrent_tasks (<= 100), bug_window_start/end, dry_run, "
    "backup_enabled, batch_size, teams_per_chunk, team_ch_props_fetch_window_seconds, person_batch_size, "
    "exclude_team_ids, semantics (original or replay), max_rate. Unknown fields are an error (exit 2) "
    "naming the closest known one; team ids are positive and within Postgres bigint.",
)
@click.option(
    "--team-ids-from",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="RECON_TEAM_IDS_FROM",
    show_envvar=True,
    help="CSV with a team_id column (e.g. `runner report --status failed --output-csv`): these teams "
    "are the team list. The config must then name no teams itself.",
)
@click.option(
    "--schedule-id",
    envvar="RECON_SCHEDULE_ID",
    show_envvar=True,
    help="Progress key. Default: derived from the configuration (teams, window, mode, chunk_size), "
    "so running the same file again resumes.",
)
@options.dry_run_option(
    "Build the models and report per chunk and team what would change; write nothing to Postgres "
    "or Kafka (no ledger, no progress). Same as dry_run: true in the config."
)
@click.option(
    "--plan",
    is_flag=True,
    envvar="RECON_SCHEDULE_PLAN",
    show_envvar=True,
    help="Print the chunks, their job ids and which are finished; build and apply nothing.",
)
@options.output_option(
    "JSON lines on stdout (one per chunk as it finishes, then a summary); logs stay on stderr."
)
def schedule(
    config_file: Path,
    team_ids_from: Path | None,
    schedule_id: str | None,
    dry_run: bool,
    plan: bool,
    output: str,
) -> None:
    """Run the reconciliation over many teams: split them into chunks, build each chunk's diff with dbt
    and apply it, with bounded concurrency. Resumable: run the same command again after an interruption.

    Exit codes: 0 every team succeeded; 1 a team or a chunk failed (list them with `runner report`), or
    messages of the schedule are quarantined (`runner outbox list`); 2 bad configuration or unreachable
    Postgres/Kafka, nothing written.
    """
    reporter = Reporter(sys.stdout, output == "json")
    config = load_files(config_file, team_ids_from, dry_run)
    if config is not None:
        # The Postgres variable may be the config's persons_db_env_var, so the line comes after it.
        click.echo(settings.targets(config.persons_db_env_var).describe(), err=True)
    if config is None:
        reporter.emit(
            {"type": "summary", "chunks": 0, "teams": 0, "failed_team_ids": []},
            f"no team ids in {team_ids_from}: nothing to do",
        )
        return
    if schedule_id is not None and not _SCHEDULE_ID.fullmatch(schedule_id):
        raise click.BadParameter("letters, digits and . _ : - only (at most 100)", param_hint="--schedule-id")
    sid = schedule_id or config.schedule_id()
    total = scheduling.chunk_count(config)  # the plan itself is generated lazily, chunk by chunk
    if plan:
        _print_plan(reporter, config, sid, total)
        return

    targets = Targets.resolve(config)
    _preflight(config, targets)
    progress = Progress(targets.pg_url, sid)
    try:
        if not config.dry_run:
            progress.lock()
            progress.register(config, total)
        done = progress.finished()
        finished_before = sum(status in FINAL_STATUSES for status in done.values())
        to_run = max(0, total - finished_before)
        positions: dict[str, int] = {}  # chunks in flight only

        def pending() -> Iterator[Chunk]:
            for position, (chunk, _) in enumerate(scheduling.iter_chunks(config), start=1):
                if done.get(chunk.job_id(sid)) not in FINAL_STATUSES:
                    positions[chunk.job_id(sid)] = position
                    yield chunk

        reporter.emit(
            {
                "type": "schedule",
                "schedule_id": sid,
                "dry_run": config.dry_run,
                "selection": config.selection(),
                "diff_mode": config.diff_mode,
                "semantics": config.semantics,
                "chunks": total,
                "finished_before": finished_before,
                "to_run": to_run,
                "embedded": targets.embedded,
                "note": engine_note(targets, config),
            },
            f"schedule {sid}{' (dry run: nothing will be written)' if config.dry_run else ''}: "
            f"{config.selection()}, {config.diff_mode} diff ({config.semantics} semantics), bug window "
            f"[{config.bug_window_start}, {config.bug_window_end})\n"
            f"{_plural(total, 'chunk')} of up to "
            f"{_plural(config.chunk_size, 'team id' if config.by_range else 'team')}: "
            f"{finished_before} finished earlier, {to_run} to run\n"
            f"{engine_note(targets, config)}",
        )
        results: list[ChunkResult] = []

        def on_done(result: ChunkResult) -> None:
            if not config.dry_run:
                progress.record(result)
            results.append(result)
            reporter.chunk(result, positions.pop(result.job_id), total)
            faults.point("schedule_chunk_recorded")

        def build(chunk: Chunk) -> Built:
            return build_chunk(config, chunk, targets)

        def finish(chunk: Chunk, built: Built) -> ChunkResult:
            return apply_chunk(config, chunk, chunk.job_id(sid), built, targets, sid)

        run_pipeline(
            pending(),
            build,
            finish,
            on_done,
            max_in_flight=1 if targets.embedded else config.max_concurrent_jobs,
        )
    finally:
        progress.close()
    # Chunks finished by earlier invocations count too: the exit code describes the whole schedule.
    earlier_failed = [] if config.dry_run else sorted(job for job, status in done.items() if status == FAILED)
    quarantined = 0
    if not config.dry_run:
        with psycopg.connect(targets.pg_url, connect_timeout=10) as conn:
            quarantined = outbox.schedule_quarantined(conn, sid)
    failed = _summarize(reporter, sid, config, results, finished_before, earlier_failed, quarantined)
    sys.exit(1 if failed else 0)


def _summarize(
    reporter: Reporter,
    sid: str,
    config: ScheduleConfig,
    results: list[ChunkResult],
    earlier: int,
    earlier_failed: list[str],
    quarantined: int = 0,
) -> bool:
    teams = [t for r in results for t in r.teams]
    failed_ids = sorted(t.team_id for t in teams if t.status != SUCCEEDED)
    build_failures = [r for r in results if r.status == BUILD_FAILED]
    # Quarantined messages (runner.stores.outbox) fail no team, but the schedule is not done until they are
    # retried or discarded.
    failed = bool(failed_ids or build_failures or earlier_failed or quarantined)
    record = {
        "type": "summary",
        "schedule_id": sid,
        "dry_run": config.dry_run,
        "chunks_run": len(results),
        "chunks_finished_earlier": earlier,
        "chunks_failed": sum(r.status != SUCCEEDED for r in results),
        "chunks_build_failed": [r.job_id for r in build_failures],
        "chunks_failed_earlier": earlier_failed,
        "teams": len(teams),
        "teams_succeeded": len(teams) - len(failed_ids),
        "teams_failed": len(failed_ids),
        "failed_team_ids": failed_ids,
        "persons_processed": sum(t.processed for t in teams),
        "persons_updated": sum(t.updated for t in teams),
        "persons_skipped": sum(t.skipped for t in teams),
        "persons_would_update": sum(t.would_update for t in teams) if config.dry_run else 0,
        "quarantined_messages": quarantined,
    }
    if not results:
        lines = [f"nothing to do: every chunk finished earlier (outcomes: runner report --schedule-id {sid})"]
    else:
        lines = [
            f"done: {_plural(len(results), 'chunk')} run ({record['chunks_failed']} failed), "
            f"{earlier} finished earlier; {_plural(len(teams), 'team')}, {record['teams_succeeded']} "
            f"succeeded, {len(failed_ids)} failed; " + _persons_text(config.dry_run, teams)
        ]
    if failed_ids:
        lines.append(f"failed teams: {failed_ids}")
    if earlier_failed:
        lines.append(f"{_plural(len(earlier_failed), 'chunk')} finished earlier with failed teams")
    for r in build_failures:
        lines.append(
            f"chunk {r.chunk.describe()} built nothing ({r.error}); running the schedule again retries it"
        )
    if (failed_ids or earlier_failed) and not config.dry_run:
        lines.append(
            f"list them: runner report --schedule-id {sid} --status failed --output-csv failed.csv\n"
            "re-run them (e.g. windowed): runner schedule --config pass2.json --team-ids-from failed.csv"
        )
    if quarantined:
        verb = "is" if quarantined == 1 else "are"
        lines.append(
            f"{_plural(quarantined, 'outbox message')} of this schedule {verb} quarantined: Kafka rejected "
            "them for good (their persons are committed); see `runner outbox list --status quarantined`, "
            "then retry or discard them"
        )
    if config.dry_run:
        lines.append("dry run: nothing was written; samples per team: runner apply --dry-run --team-id ID")
    reporter.emit(record, "\n".join(lines))
    return failed


# `--plan` lists at most this many chunks; the rest is counted (a range may hold billions of chunks).
PLAN_LISTED = 1000


def _print_plan(reporter: Reporter, config: ScheduleConfig, sid: str, total: int) -> None:
    done: dict[str, str] = {}
    note = ""
    try:
        done = read_progress(persons_db_url(config), sid)
    except (ConfigError, psycopg.Error) as exc:
        note = f" (progress unknown: {str(exc).splitlines()[0]})"
    lines = [f"schedule {sid}: {config.selection()}, {_plural(total, 'chunk')}{note}"]
    records: list[dict[str, Any]] = []
    chunks = (chunk for chunk, _ in scheduling.iter_chunks(config))
    for i, chunk in enumerate(chunks, start=1):
        if i > PLAN_LISTED:
            more = total - PLAN_LISTED
            finished = sum(status in FINAL_STATUSES for status in done.values())
            records.append({"type": "chunk_plan_more", "chunks": more, "finished_in_all": finished})
            lines.append(f"  ... and {more} more chunks ({finished} of all {total} finished)")
            break
        job_id = chunk.job_id(sid)
        status = done.get(job_id, "pending")
        records.append(
            {"type": "chunk_plan", "position": i, "job_id": job_id, "status": status, **chunk.to_json()}
        )
        lines.append(f"  {i:>4}  {job_id}  {chunk.describe()}  {status}")
    if reporter.as_json:
        for record in records:
            reporter.emit(record, "")
    else:
        reporter.emit({}, "\n".join(lines))
