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

The job is `runner.jobs.schedule`; this module is the command and its output (human lines or JSON lines).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import click

from runner.commands import options
from runner.config import settings
from runner.config.schedule import ScheduleConfig, load_files
from runner.jobs import schedule as schedule_job
from runner.jobs.chunk_run import BUILD_FAILED, JOB_LOCKED, ChunkResult, Targets
from runner.jobs.schedule import ScheduleRun
from runner.rules.scheduling import Chunk

_SCHEDULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")  # fullmatch: no trailing newline


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


def _start(reporter: Reporter, run: ScheduleRun, targets: Targets) -> None:
    config, sid = run.config, run.schedule_id
    reporter.emit(
        {
            "type": "schedule",
            "schedule_id": sid,
            "dry_run": config.dry_run,
            "selection": config.selection(),
            "diff_mode": config.diff_mode,
            "semantics": config.semantics,
            "chunks": run.chunks,
            "finished_before": run.finished_before,
            "to_run": run.to_run,
            "embedded": targets.embedded,
            "note": engine_note(targets, config),
        },
        f"schedule {sid}{' (dry run: nothing will be written)' if config.dry_run else ''}: "
        f"{config.selection()}, {config.diff_mode} diff ({config.semantics} semantics), bug window "
        f"[{config.bug_window_start}, {config.bug_window_end})\n"
        f"{_plural(run.chunks, 'chunk')} of up to "
        f"{_plural(config.chunk_size, 'team id' if config.by_range else 'team')}: "
        f"{run.finished_before} finished earlier, {run.to_run} to run\n"
        f"{engine_note(targets, config)}",
    )


def _summarize(reporter: Reporter, run: ScheduleRun) -> None:
    record = run.summary()
    config, sid = run.config, run.schedule_id
    teams = [t for r in run.results for t in r.teams]
    failed_ids = record["failed_team_ids"]
    if not run.results:
        lines = [f"nothing to do: every chunk finished earlier (outcomes: runner report --schedule-id {sid})"]
    else:
        lines = [
            f"done: {_plural(len(run.results), 'chunk')} run ({record['chunks_failed']} failed), "
            f"{run.finished_before} finished earlier; {_plural(len(teams), 'team')}, "
            f"{record['teams_succeeded']} succeeded, {len(failed_ids)} failed; "
            + _persons_text(config.dry_run, teams)
        ]
    if failed_ids:
        lines.append(f"failed teams: {failed_ids}")
    if run.earlier_failed:
        lines.append(f"{_plural(len(run.earlier_failed), 'chunk')} finished earlier with failed teams")
    for r in run.results:
        if r.status == BUILD_FAILED:
            lines.append(
                f"chunk {r.chunk.describe()} built nothing ({r.error}); running the schedule again retries it"
            )
    if (failed_ids or run.earlier_failed) and not config.dry_run:
        lines.append(
            f"list them: runner report --schedule-id {sid} --status failed --output-csv failed.csv\n"
            "re-run them (e.g. windowed): runner schedule --config pass2.json --team-ids-from failed.csv"
        )
    if run.quarantined:
        verb = "is" if run.quarantined == 1 else "are"
        lines.append(
            f"{_plural(run.quarantined, 'outbox message')} of this schedule {verb} quarantined: Kafka "
            "rejected them for good (their persons are committed); see `runner outbox list --status "
            "quarantined`, then retry or discard them"
        )
    if config.dry_run:
        lines.append("dry run: nothing was written; samples per team: runner apply --dry-run --team-id ID")
    reporter.emit(record, "\n".join(lines))


def _print_plan(reporter: Reporter, config: ScheduleConfig, sid: str) -> None:
    shown = schedule_job.plan(config, sid)
    if reporter.as_json:
        for record in shown.listed:
            reporter.emit(record, "")
        return
    note = f" ({shown.progress_note})" if shown.progress_note else ""
    lines = [f"schedule {sid}: {config.selection()}, {_plural(shown.chunks, 'chunk')}{note}"]
    for record in shown.listed:
        if record["type"] == "chunk_plan_more":
            lines.append(
                f"  ... and {record['chunks']} more chunks "
                f"({record['finished_in_all']} of all {shown.chunks} finished)"
            )
        else:
            chunk = Chunk.from_json(record)
            lines.append(
                f"  {record['position']:>4}  {record['job_id']}  {chunk.describe()}  {record['status']}"
            )
    reporter.emit({}, "\n".join(lines))


# --- command ---------------------------------------------------------------------------------------


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
    if config is None:
        reporter.emit(
            {"type": "summary", "chunks": 0, "teams": 0, "failed_team_ids": []},
            f"no team ids in {team_ids_from}: nothing to do",
        )
        return
    # The Postgres variable may be the config's persons_db_env_var, so the line comes after it.
    click.echo(settings.targets(config.persons_db_env_var).describe(), err=True)
    if schedule_id is not None and not _SCHEDULE_ID.fullmatch(schedule_id):
        raise click.BadParameter("letters, digits and . _ : - only (at most 100)", param_hint="--schedule-id")
    sid = schedule_id or config.schedule_id()
    if plan:
        _print_plan(reporter, config, sid)
        return
    targets = Targets.resolve(config)
    schedule_job.preflight(config, targets)
    run = schedule_job.run_schedule(
        config,
        sid,
        targets,
        on_start=lambda run: _start(reporter, run, targets),
        on_chunk=reporter.chunk,
    )
    _summarize(reporter, run)
    sys.exit(1 if run.failed else 0)
