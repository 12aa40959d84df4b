"""`runner report`: which teams succeeded or failed, from the run ledger (the original's extraction
script, R11.8, reading `recon_run_team` instead of the orchestrator's API).

A team may have several results (several jobs, or the same job re-run): the **most recent** attempt
of each team decides its status. Person totals are given twice: deduplicated (latest result per team)
and raw (every result in scope). Teams whose latest attempt never finished (the run is still going,
or it was killed) are `unfinished`. A scheduled range chunk whose dbt build failed has no teams in
the ledger; such chunks are listed separately until a later invocation of the schedule builds them.
Messages of the jobs in scope that Kafka rejected for good (quarantined in the outbox, `runner
outbox`) are counted per job: their persons are committed in Postgres but not yet in ClickHouse.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
import psycopg

from runner.commands import options
from runner.config import settings
from runner.config.settings import ConfigError
from runner.stores import ledger, outbox

CSV_COLUMNS = (
    "team_id",
    "status",
    "error",
    "run_id",
    "step_key",
    "persons_processed",
    "persons_updated",
    "persons_skipped",
)
UNFINISHED = "unfinished"
STATUSES = (ledger.SUCCEEDED, ledger.FAILED, UNFINISHED)


@dataclass(frozen=True)
class TeamResult:
    team_id: int
    status: str
    error: str | None
    run_id: str
    step_key: str | None
    persons_processed: int
    persons_updated: int
    persons_skipped: int
    started_at: datetime
    finished_at: datetime | None

    def csv_row(self) -> list[Any]:
        return [
            self.team_id,
            self.status,
            self.error or "",
            self.run_id,
            self.step_key or "",
            self.persons_processed,
            self.persons_updated,
            self.persons_skipped,
        ]

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["started_at"] = self.started_at.isoformat()
        record["finished_at"] = self.finished_at.isoformat() if self.finished_at else None
        return record


@dataclass(frozen=True)
class Filters:
    since: datetime | None = None
    until: datetime | None = None
    job_ids: tuple[str, ...] = ()
    schedule_id: str | None = None

    def describe(self) -> str:
        parts = []
        if self.since:
            parts.append(f"since {self.since:%Y-%m-%d %H:%M:%S}")
        if self.until:
            parts.append(f"until {self.until:%Y-%m-%d %H:%M:%S}")
        if self.job_ids:
            parts.append(f"jobs {', '.join(self.job_ids)}")
        if self.schedule_id:
            parts.append(f"schedule {self.schedule_id}")
        return ", ".join(parts) or "all runs"


def _job_filter(filters: Filters, column: str) -> tuple[str, dict[str, Any]]:
    clauses = []
    params: dict[str, Any] = {}
    if filters.job_ids:
        clauses.append(f"{column} = ANY(%(job_ids)s)")
        params["job_ids"] = list(filters.job_ids)
    if filters.schedule_id:
        clauses.append(f"starts_with({column}, %(schedule_prefix)s)")
        params["schedule_prefix"] = filters.schedule_id + "-"
    return " AND ".join(clauses) or "true", params


def _status(ledger_status: str) -> str:
    """The report's status of a ledger row. An `incomplete` team (some persons not applied) is listed
    as failed, with the ledger's error naming them, so that the next pass re-runs it."""
    if ledger_status == ledger.INCOMPLETE:
        return ledger.FAILED
    return ledger_status if ledger_status in (ledger.SUCCEEDED, ledger.FAILED) else UNFINISHED


def read_results(conn: psycopg.Connection, filters: Filters) -> list[TeamResult]:
    """Every team result of apply jobs in scope, newest attempt first within each team."""
    job_clause, params = _job_filter(filters, "t.job_id")
    params.update(since=filters.since, until=filters.until)
    rows = conn.execute(
        f"""
        SELECT t.team_id, t.status, t.error, t.job_id, t.chunk_id, t.processed, t.updated, t.skipped,
               t.started_at, t.finished_at
        FROM recon_run_team AS t
        JOIN recon_run AS r ON r.job_id = t.job_id
        WHERE r.kind = 'apply'
          AND (%(since)s::timestamptz IS NULL OR t.started_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR t.started_at < %(until)s)
          AND {job_clause}
        ORDER BY t.team_id, t.started_at DESC, t.job_id DESC
        """,
        params,
    ).fetchall()
    return [
        TeamResult(
            team_id=int(r[0]),
            status=_status(r[1]),
            error=r[2],
            run_id=r[3],
            step_key=r[4],
            persons_processed=int(r[5]),
            persons_updated=int(r[6]),
            persons_skipped=int(r[7]),
            started_at=r[8],
            finished_at=r[9],
        )
        for r in rows
    ]


def latest_per_team(results: list[TeamResult]) -> list[TeamResult]:
    """R11.8: the most recent result of each team (results are newest first within a team)."""
    latest: dict[int, TeamResult] = {}
    for result in results:
        latest.setdefault(result.team_id, result)
    return [latest[t] for t in sorted(latest)]


def unbuilt_chunks(conn: psycopg.Connection, filters: Filters) -> list[dict[str, Any]]:
    """Scheduled range chunks whose latest attempt failed in dbt: their teams are not in the ledger."""
    exists = conn.execute("SELECT to_regclass('recon_schedule_chunk')").fetchone()
    if not exists or exists[0] is None:
        return []
    job_clause, params = _job_filter(filters, "job_id")
    params.update(since=filters.since, until=filters.until)
    rows = conn.execute(
        f"""
        SELECT job_id, schedule_id, min_team_id, max_team_id, error, finished_at
        FROM recon_schedule_chunk
        WHERE status = 'build_failed' AND team_ids IS NULL
          AND (%(since)s::timestamptz IS NULL OR finished_at >= %(since)s)
          AND (%(until)s::timestamptz IS NULL OR finished_at < %(until)s)
          AND {job_clause}
        ORDER BY job_id
        """,
        params,
    ).fetchall()
    return [
        {
            "job_id": r[0],
            "schedule_id": r[1],
            "min_team_id": r[2],
            "max_team_id": r[3],
            "error": r[4],
            "finished_at": r[5].isoformat(),
        }
        for r in rows
    ]


def totals(results: list[TeamResult]) -> dict[str, int]:
    return {
        "persons_processed": sum(r.persons_processed for r in results),
        "persons_updated": sum(r.persons_updated for r in results),
        "persons_skipped": sum(r.persons_skipped for r in results),
    }


def runs_overview(results: list[TeamResult]) -> list[dict[str, Any]]:
    """Per run (job id): its teams' outcomes and persons, newest run first."""
    runs: dict[str, dict[str, Any]] = {}
    for r in results:
        run = runs.setdefault(
            r.run_id,
            {"run_id": r.run_id, "started_at": r.started_at, "teams": 0, **dict.fromkeys(STATUSES, 0)},
        )
        run["teams"] += 1
        run[r.status] += 1
        run["started_at"] = min(run["started_at"], r.started_at)
        for key, value in totals([r]).items():
            run[key] = run.get(key, 0) + value
    ordered = sorted(runs.values(), key=lambda run: (run["started_at"], run["run_id"]), reverse=True)
    return [{**run, "started_at": run["started_at"].isoformat()} for run in ordered]


def write_csv(path: Path, rows: list[TeamResult]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(row.csv_row())


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _totals_text(t: dict[str, int]) -> str:
    return f"processed={t['persons_processed']} updated={t['persons_updated']} skipped={t['persons_skipped']}"


def _human(
    out: IO[str],
    filters: Filters,
    latest: list[TeamResult],
    results: list[TeamResult],
    listed: list[TeamResult],
    status: str | None,
    unbuilt: list[dict[str, Any]],
    quarantined: dict[str, int],
    details: bool,
) -> None:
    counts = {s: sum(r.status == s for r in latest) for s in STATUSES}
    runs = runs_overview(results)
    out.write(
        f"teams ({filters.describe()}): {len(latest)}: {counts[ledger.SUCCEEDED]} succeeded, "
        f"{counts[ledger.FAILED]} failed"
        + (f", {counts[UNFINISHED]} unfinished" if counts[UNFINISHED] else "")
        + "\n"
    )
    out.write(f"persons, latest result per team: {_totals_text(totals(latest))}\n")
    out.write(
        f"persons, all {len(results)} results in {len(runs)} runs (raw): {_totals_text(totals(results))}\n"
    )
    if details:
        out.write("\nruns (newest first):\n")
        for run in runs:
            out.write(
                f"  {run['run_id']}  started {run['started_at']}: {run['teams']} "
                f"team{'' if run['teams'] == 1 else 's'}, "
                f"{run[ledger.SUCCEEDED]} succeeded, {run[ledger.FAILED]} failed, "
                f"{run[UNFINISHED]} unfinished; {_totals_text(run)}\n"
            )
    title = f"{status} teams" if status else "teams"
    if listed:
        out.write(f"\n{title} (latest result):\n")
        for r in listed:
            line = f"  team {r.team_id}  {r.status}  run {r.run_id}  step {r.step_key or '-'}"
            line += f"  {_totals_text(totals([r]))}"
            if r.error:
                line += f"\n    error: {r.error.splitlines()[0] if r.error.strip() else r.error}"
            out.write(line + "\n")
            if details and r.status != ledger.SUCCEEDED:
                for attempt in (a for a in results if a.team_id == r.team_id):
                    out.write(
                        f"    attempt {attempt.started_at:%Y-%m-%d %H:%M:%S} run {attempt.run_id}: "
                        f"{attempt.status}{': ' + attempt.error if attempt.error else ''}\n"
                    )
    for chunk in unbuilt:
        out.write(
            f"chunk {chunk['job_id']} (team ids {chunk['min_team_id']}..{chunk['max_team_id']}) "
            f"failed in dbt before its teams were known: {chunk['error']}; "
            "run its schedule again to retry it\n"
        )
    for job_id, count in quarantined.items():
        out.write(outbox.quarantine_note(job_id, count) + "\n")


@click.command("report")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]),
    envvar="RECON_REPORT_SINCE",
    show_envvar=True,
    help="Only attempts started at or after this time (UTC).",
)
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"]),
    envvar="RECON_REPORT_UNTIL",
    show_envvar=True,
    help="Only attempts started before this time (UTC).",
)
@click.option(
    "--job-id",
    "job_ids",
    multiple=True,
    envvar="RECON_REPORT_JOB_IDS",
    show_envvar=True,
    help="Only these jobs (repeatable; the env var takes a space-separated list).",
)
@click.option(
    "--schedule-id",
    envvar="RECON_REPORT_SCHEDULE_ID",
    show_envvar=True,
    help="Only the jobs of this schedule (`runner schedule` prints its id).",
)
@click.option(
    "--status",
    type=click.Choice(STATUSES),
    default=None,
    envvar="RECON_REPORT_STATUS",
    show_envvar=True,
    help="List (and write to CSV) only teams whose latest result has this status. Counts cover all teams.",
)
@click.option(
    "--output-csv",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    envvar="RECON_REPORT_CSV",
    show_envvar=True,
    help="Write the listed teams to this CSV (team_id,status,error,run_id,step_key,persons_processed,"
    "persons_updated,persons_skipped); `runner schedule --team-ids-from` reads it back.",
)
@options.output_option("one JSON document on stdout.")
@click.option(
    "--details",
    is_flag=True,
    envvar="RECON_REPORT_DETAILS",
    show_envvar=True,
    help="Also per run, and every attempt of each team that did not succeed.",
)
def report(
    since: datetime | None,
    until: datetime | None,
    job_ids: tuple[str, ...],
    schedule_id: str | None,
    status: str | None,
    output_csv: Path | None,
    output: str,
    details: bool,
) -> None:
    """Teams and their latest outcome from the run ledger, with person totals; optionally a CSV of the
    failed ones to re-run (`runner schedule --config pass2.json --team-ids-from failed.csv`).

    Exit codes: 0 every team's latest result succeeded; 1 a team's latest result failed or is
    unfinished, a chunk failed before its teams were known, or a job in scope has quarantined Kafka
    messages (`runner outbox list`); 2 bad usage, Postgres unreachable.
    """
    filters = Filters(_utc(since), _utc(until), tuple(job_ids), schedule_id)
    if filters.since and filters.until and filters.since >= filters.until:
        raise click.BadParameter("must be after --since", param_hint="--until")
    url = settings.persons_db_url()
    assert url is not None
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            results = read_results(conn, filters)
            unbuilt = unbuilt_chunks(conn, filters)
            quarantined = outbox.jobs_quarantined(conn, sorted({r.run_id for r in results}))
    except psycopg.errors.UndefinedTable as exc:
        raise ConfigError("the run ledger is missing in Postgres: run `runner db migrate`") from exc
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to Postgres ({settings.ENV_PERSONS_DB}): {exc}".strip()) from exc
    latest = latest_per_team(results)
    listed = [r for r in latest if status is None or r.status == status]
    if output_csv is not None:
        write_csv(output_csv, listed)
    if output == "json":
        document = {
            "filters": filters.describe(),
            "teams": len(latest),
            "counts": {s: sum(r.status == s for r in latest) for s in STATUSES},
            "totals": {"deduplicated": totals(latest), "raw": totals(results)},
            "results": len(results),
            "listed": [r.to_json() for r in listed],
            "chunks_failed_before_discovery": unbuilt,
            "quarantined_messages": quarantined,
        }
        if details:
            document["runs"] = runs_overview(results)
            document["attempts"] = [r.to_json() for r in results]
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        _human(sys.stdout, filters, latest, results, listed, status, unbuilt, quarantined, details)
        if output_csv is not None:
            sys.stdout.write(f"wrote {len(listed)} teams to {output_csv}\n")
    failed = unbuilt or quarantined or any(r.status != ledger.SUCCEEDED for r in latest)
    sys.exit(1 if failed else 0)
