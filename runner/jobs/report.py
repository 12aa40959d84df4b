"""`runner report`'s job: which teams succeeded or failed, from the run ledger (the original's extraction
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from runner.config import settings
from runner.config.settings import ConfigError
from runner.rules.statuses import FAILED, INCOMPLETE, RUNNING, SUCCEEDED
from runner.stores import outbox
from runner.stores.reports import STATUSES, UNFINISHED, Filters, TeamResult, read_results, unbuilt_chunks

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
LEDGER_STATUSES = (SUCCEEDED, FAILED, INCOMPLETE, RUNNING)

# `--status`: every status a team can have, the report's and the ledger's. `failed` keeps its meaning
# (failed or incomplete: what a re-run of the failed teams retries); `incomplete` and `running` pick
# the ledger's own word (`running` is every `unfinished` team: the ledger cannot tell a running team
# from one whose process was killed).
STATUS_FILTERS = (SUCCEEDED, FAILED, INCOMPLETE, UNFINISHED, RUNNING)


def has_status(result: TeamResult, status: str | None) -> bool:
    """Whether `--status status` lists the result (None: every result)."""
    if status is None:
        return True
    if status in (INCOMPLETE, RUNNING):
        return result.ledger_status == status
    return result.status == status


def latest_per_team(results: Sequence[TeamResult]) -> list[TeamResult]:
    """R11.8: the most recent result of each team (results are newest first within a team)."""
    latest: dict[int, TeamResult] = {}
    for result in results:
        latest.setdefault(result.team_id, result)
    return [latest[t] for t in sorted(latest)]


def totals(results: Sequence[TeamResult]) -> dict[str, int]:
    return {
        "persons_processed": sum(r.persons_processed for r in results),
        "persons_updated": sum(r.persons_updated for r in results),
        "persons_skipped": sum(r.persons_skipped for r in results),
    }


def runs_overview(results: Sequence[TeamResult]) -> list[dict[str, Any]]:
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


@dataclass(frozen=True)
class Report:
    filters: Filters
    results: list[TeamResult]  # every attempt in scope, newest first within each team
    latest: list[TeamResult]  # the latest attempt of each team, by team id
    unbuilt: list[dict[str, Any]]  # range chunks that failed in dbt before their teams were known
    quarantined: dict[str, int]  # job id -> quarantined outbox messages

    def counts(self) -> dict[str, int]:
        """Teams per report status (latest result)."""
        return {s: sum(r.status == s for r in self.latest) for s in STATUSES}

    def ledger_counts(self) -> dict[str, int]:
        """Teams per ledger status (latest result); `failed` and `incomplete` make the report's failed."""
        return {s: sum(r.ledger_status == s for r in self.latest) for s in LEDGER_STATUSES}

    def listed(self, status: str | None) -> list[TeamResult]:
        return [r for r in self.latest if has_status(r, status)]

    @property
    def failed(self) -> bool:
        """Something needs a look: a team's latest result did not succeed, a chunk built nothing, or
        messages are quarantined."""
        return bool(self.unbuilt or self.quarantined or any(r.status != SUCCEEDED for r in self.latest))


def build_report(filters: Filters) -> Report:
    """Read the ledger (Postgres from the settings) for `filters`."""
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
    return Report(filters, results, latest_per_team(results), unbuilt, quarantined)


def write_csv(path: Path, rows: Sequence[TeamResult]) -> None:
    """The listed teams as CSV (`CSV_COLUMNS`); `runner schedule --team-ids-from` reads it back."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(row.csv_row())
