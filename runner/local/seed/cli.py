"""`runner demo seed`: the click command and its text summary (the work is in `run.seed`)."""

from __future__ import annotations

import io
import json
import logging

import click

from runner.config import settings
from runner.local.seed.config import (
    DEFAULT_BUG_WINDOW_END,
    DEFAULT_BUG_WINDOW_START,
    DEFAULT_DAYS,
    DEFAULT_LOST_FRACTION,
    DEFAULT_START,
)
from runner.local.seed.run import SeedResult, seed

log = logging.getLogger("runner.local.seed")  # the name it had before the split: same log lines


def _summary(result: SeedResult) -> str:
    c = result.counts
    out = io.StringIO()
    out.write(
        f"seeded {result.source_database} (ClickHouse) and posthog_person (Postgres) "
        f"with seed {result.seed}\n"
    )
    quiet = (
        f" (team {result.quiet_team_id} has no property changes in the window)"
        if result.quiet_team_id
        else ""
    )
    out.write(
        f"  teams      {len(result.team_ids)}: ids {result.team_ids[0]}..{result.team_ids[-1]}{quiet}\n"
    )
    out.write(
        f"  persons    {result.persons} created, {c['merged_persons']} merged away, "
        f"{c['live_persons']} live in Postgres; "
        f"{c['deleted_persons']} deleted in ClickHouse, {c['missing_in_postgres']} missing in Postgres, "
        f"{c['null_version_in_postgres']} with NULL version, {c['history_rows']} with older ClickHouse rows\n"
    )
    out.write(
        f"  events     {result.events} from {result.start} to {result.end} (UTC); "
        f"{c['operation_events']} carry property operations; {c['malformed_events']} malformed, "
        f"{c['blocklisted_operations']} blocklisted keys, "
        f"{c['null_values']} null values\n"
    )
    out.write(
        f"  overrides  {result.overrides} rows; {c['deleted_overrides']} deleted, "
        f"{c['distinct_ids_overridden_twice']} distinct_ids overridden twice\n"
    )
    out.write(
        f"  bug window [{result.bug_window_start}, {result.bug_window_end}) UTC: "
        f"{c['window_events']} events, "
        f"{c['window_operation_events']} with operations, {result.lost_events} lost "
        f"(fraction {result.lost_fraction})\n"
    )
    out.write(f"  took       {result.timings['total_s']:.1f}s\n")
    out.write("next, compute the diff:\n")
    out.write(f"  {result.dbt_command()}\n")
    return out.getvalue()


@click.group("demo")
def demo() -> None:
    """Demo data: PostHog-shaped events, persons and overrides with a bug window of lost updates."""


@demo.command("seed")
@click.option(
    "--teams",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    envvar="RECON_DEMO_TEAMS",
    show_envvar=True,
    help="Number of teams (ids 1..N).",
)
@click.option(
    "--persons",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    envvar="RECON_DEMO_PERSONS",
    show_envvar=True,
    help="Persons in total over all teams, including those later merged away.",
)
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=300_000,
    show_default=True,
    envvar="RECON_DEMO_EVENTS",
    show_envvar=True,
    help="Events in total.",
)
@click.option(
    "--seed",
    "seed_",
    type=int,
    default=42,
    show_default=True,
    envvar="RECON_DEMO_SEED",
    show_envvar=True,
    help="Random seed: the same seed writes identical tables.",
)
@click.option(
    "--start",
    default=DEFAULT_START,
    show_default=True,
    envvar="RECON_DEMO_START",
    show_envvar=True,
    help="First possible event time, UTC (a fixed anchor: the data never depends on the clock).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=DEFAULT_DAYS,
    show_default=True,
    envvar="RECON_DEMO_DAYS",
    show_envvar=True,
    help="Days of events from --start.",
)
@click.option(
    "--bug-window-start",
    default=DEFAULT_BUG_WINDOW_START,
    show_default=True,
    envvar="RECON_DEMO_BUG_WINDOW_START",
    show_envvar=True,
    help="Start of the bug window, UTC.",
)
@click.option(
    "--bug-window-end",
    default=DEFAULT_BUG_WINDOW_END,
    show_default=True,
    envvar="RECON_DEMO_BUG_WINDOW_END",
    show_envvar=True,
    help="End of the bug window (exclusive), UTC.",
)
@click.option(
    "--lost-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_LOST_FRACTION,
    show_default=True,
    envvar="RECON_DEMO_LOST_FRACTION",
    show_envvar=True,
    help="Fraction of the window's property-changing events whose updates were lost.",
)
@click.option(
    "--reset/--no-reset",
    default=True,
    show_default=True,
    envvar="RECON_DEMO_RESET",
    show_envvar=True,
    help="Empty events, person, person_distinct_id_overrides and posthog_person first.",
)
@click.option(
    "--source-database",
    default=settings.DEFAULT_SOURCE_DB,
    show_default=True,
    envvar=settings.ENV_SOURCE_DB,
    show_envvar=True,
    help="ClickHouse database of PostHog's tables (the dbt var source_database).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    default=False,
    envvar="RECON_DEMO_ALLOW_REMOTE",
    show_envvar=True,
    help="Write even when ClickHouse or Postgres is not local (seeding empties PostHog's tables).",
)
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="`json` prints one machine-readable object and nothing else on stdout.",
)
def seed_cmd(
    teams: int,
    persons: int,
    events: int,
    seed_: int,
    start: str,
    days: int,
    bug_window_start: str,
    bug_window_end: str,
    lost_fraction: float,
    reset: bool,
    source_database: str,
    allow_remote: bool,
    output: str,
) -> None:
    """Write deterministic demo data to ClickHouse (events, person, overrides) and Postgres (posthog_person).

    Prints a summary and the `dbt run` line that computes the diff for the bug window.
    """
    log.info("seeding %d teams, %d persons, %d events (seed %d)", teams, persons, events, seed_)
    result = seed(
        teams,
        persons,
        events,
        seed_,
        start=start,
        days=days,
        bug_window_start=bug_window_start,
        bug_window_end=bug_window_end,
        lost_fraction=lost_fraction,
        reset=reset,
        source_database=source_database,
        allow_remote=allow_remote,
    )
    if output == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(_summary(result), nl=False)
