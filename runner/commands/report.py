"""`runner report`: which teams succeeded or failed, from the run ledger (the job: `runner.jobs.report`).

Exit codes: 0 every team's latest result succeeded; 1 a team's latest result did not succeed, a chunk
failed before its teams were known, or a job in scope has quarantined Kafka messages; 2 bad usage,
Postgres unreachable.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import click

from runner.commands import options
from runner.jobs.report import STATUS_FILTERS, Report, build_report, runs_overview, totals, write_csv
from runner.rules.statuses import FAILED, INCOMPLETE, SUCCEEDED
from runner.stores import outbox
from runner.stores.reports import UNFINISHED, Filters, TeamResult


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _totals_text(t: dict[str, int]) -> str:
    return f"processed={t['persons_processed']} updated={t['persons_updated']} skipped={t['persons_skipped']}"


def _status_text(result: TeamResult) -> str:
    """The report's status, with the ledger's own word where it says more (`failed (incomplete)`)."""
    return f"{result.status} ({INCOMPLETE})" if result.ledger_status == INCOMPLETE else result.status


def _human(out: IO[str], report: Report, status: str | None, details: bool) -> None:
    latest, results = report.latest, report.results
    counts = report.counts()
    incomplete = report.ledger_counts()[INCOMPLETE]
    runs = runs_overview(results)
    out.write(
        f"teams ({report.filters.describe()}): {len(latest)}: {counts[SUCCEEDED]} succeeded, "
        f"{counts[FAILED]} failed"
        + (f" ({incomplete} incomplete)" if incomplete else "")
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
                f"{run[SUCCEEDED]} succeeded, {run[FAILED]} failed, "
                f"{run[UNFINISHED]} unfinished; {_totals_text(run)}\n"
            )
    listed = report.listed(status)
    title = f"{status} teams" if status else "teams"
    if listed:
        out.write(f"\n{title} (latest result):\n")
        for r in listed:
            line = f"  team {r.team_id}  {_status_text(r)}  run {r.run_id}  step {r.step_key or '-'}"
            line += f"  {_totals_text(totals([r]))}"
            if r.error:
                line += f"\n    error: {r.error.splitlines()[0] if r.error.strip() else r.error}"
            out.write(line + "\n")
            if details and r.status != SUCCEEDED:
                for attempt in (a for a in results if a.team_id == r.team_id):
                    out.write(
                        f"    attempt {attempt.started_at:%Y-%m-%d %H:%M:%S} run {attempt.run_id}: "
                        f"{attempt.status}{': ' + attempt.error if attempt.error else ''}\n"
                    )
    elif status:
        out.write(f"\nno {title} (latest result)\n")
    for chunk in report.unbuilt:
        out.write(
            f"chunk {chunk['job_id']} (team ids {chunk['min_team_id']}..{chunk['max_team_id']}) "
            f"failed in dbt before its teams were known: {chunk['error']}; "
            "run its schedule again to retry it\n"
        )
    for job_id, count in report.quarantined.items():
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
    type=click.Choice(STATUS_FILTERS),
    default=None,
    envvar="RECON_REPORT_STATUS",
    show_envvar=True,
    help="List (and write to CSV) only teams whose latest result has this status: succeeded; failed "
    "(failed, or incomplete: what a re-run retries); incomplete (ran to its end, but some persons were "
    "not applied); unfinished (never finished: still running, or its process was killed); running (as "
    "the ledger words unfinished: it cannot tell a running team from a killed one). Counts cover all "
    "teams.",
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

    `--status incomplete` (or `failed`, `unfinished`) lists the teams that need a look.

    Exit codes: 0 every team's latest result succeeded; 1 a team's latest result failed or is
    unfinished, a chunk failed before its teams were known, or a job in scope has quarantined Kafka
    messages (`runner outbox list`); 2 bad usage, Postgres unreachable.
    """
    filters = Filters(_utc(since), _utc(until), tuple(job_ids), schedule_id)
    if filters.since and filters.until and filters.since >= filters.until:
        raise click.BadParameter("must be after --since", param_hint="--until")
    report = build_report(filters)
    listed = report.listed(status)
    if output_csv is not None:
        write_csv(output_csv, listed)
    if output == "json":
        document = {
            "filters": filters.describe(),
            "teams": len(report.latest),
            "counts": report.counts(),
            "ledger_counts": report.ledger_counts(),
            "totals": {"deduplicated": totals(report.latest), "raw": totals(report.results)},
            "results": len(report.results),
            "listed": [r.to_json() for r in listed],
            "chunks_failed_before_discovery": report.unbuilt,
            "quarantined_messages": report.quarantined,
        }
        if details:
            document["runs"] = runs_overview(report.results)
            document["attempts"] = [r.to_json() for r in report.results]
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        _human(sys.stdout, report, status, details)
        if output_csv is not None:
            sys.stdout.write(f"wrote {len(listed)} teams to {output_csv}\n")
    sys.exit(1 if report.failed else 0)
