"""`runner verify --job-id ID`: did the job's repairs reach ClickHouse, and does the diff still see them?

It recomputes the diff with dbt (in this process; `--no-recompute` skips that and reads the diff table
as it is), then checks every person the job updated (its outbox rows):

- `ok`: ClickHouse holds the job's version (or a later one) and the diff no longer lists the person.
- `changed_since`: still in the diff, but Postgres moved past the job's version: someone else changed
  the person since (expected, not an error).
- `postgres_behind`: ClickHouse already held a higher version than Postgres, so the job's version
  never replaces it there (gotcha 19; expected, not an error).
- `rule_artifact`: still in the diff at the job's version, but only for reasons the diff rules
  themselves produce (expected, not an error): a SET whose value equals the stored one as JSON, a SET on
  a key the job filled with SET_ONCE, or a SET_ONCE/UNSET of a key the job itself touched. The
  original's per-key rules, kept by default, judge each kind against the current state alone (gotchas
  2–4): they add a key a later unset removes, remove one a later set re-added, or fill an absent key
  with the SET_ONCE value and only see the later SET once the key exists, so a recomputed diff can list
  such keys again (and alternate between runs).
  Under `semantics: replay` there is no such class: a replayed diff is a fixed point (once applied and
  ingested, the next build lists the person no more), so anything left is `differs`.
- `not_ingested`: ClickHouse has not got the job's version yet (run `runner warehouse sync-persons`
  locally; in production, wait for ingestion).
- `differs`: still in the diff at the job's version for any other reason.

Human output: the count per class, then a sample of the persons in each class but `ok` (`--sample`,
5 by default, one line each); `--output json` (or `--json`) gives one JSON object with the counts and
every person not `ok` (`persons`).

Exit codes: 0 nothing unexpected; 1 persons `not_ingested` or `differs`; 2 bad usage or configuration.

The job (reads, recompute) is `runner.jobs.verify`, the classification `runner.rules.verify`; this module
is the command and its output.
"""

from __future__ import annotations

import json
import sys
from typing import IO

import click

from runner.commands import options
from runner.jobs.verify import SAMPLE_ORDER, RecomputeFailed, VerifyReport, verify_job
from runner.rules.verify import CLASSES


def _write_json(out: IO[str], report: VerifyReport) -> None:
    """One JSON object: the counts, up to 20 samples per class (`samples`, as before) and every person
    not `ok` (`persons`, streamed from the spooled findings)."""
    head = {
        "type": "verify",
        "job_id": report.job_id,
        "job_status": report.job_status,
        "recomputed": report.recomputed,
        "semantics": report.semantics,
        **{klass: report.verdict.counts.get(klass, 0) for klass in CLASSES},
        "samples": report.verdict.samples,
    }
    out.write(json.dumps(head)[:-1] + ', "persons": [')
    for i, person in enumerate(report.findings):
        out.write((", " if i else "") + json.dumps(person))
    out.write("]}\n")


def _write_human(out: IO[str], report: VerifyReport, sample: int) -> None:
    counts = report.verdict.counts
    against = (
        f"diff recomputed with semantics {report.semantics}"
        if report.recomputed
        else f"diff table semantics {report.semantics}"
    )
    out.write(
        f"job {report.job_id} ({report.job_status}): {report.persons} persons updated by the job, {against}\n"
    )
    for klass in CLASSES:
        out.write(f"  {klass:<14}{counts.get(klass, 0):>10}\n")
    samples = report.findings.sample(sample)
    for klass in SAMPLE_ORDER:
        shown = samples.get(klass, [])
        for person in shown:
            detail = {k: v for k, v in person.items() if k != "class"}
            out.write(f"  {klass}: {json.dumps(detail)}\n")
        more = counts.get(klass, 0) - len(shown)
        if more > 0:
            out.write(
                f"  ... {more} more {klass} (--sample N shows up to N per class; --output json lists all)\n"
            )
    if counts.get("not_ingested"):
        out.write(
            "hint: ClickHouse has not ingested the job's messages yet "
            "(locally: runner warehouse sync-persons)\n"
        )
    out.write("verify: " + ("FAILED" if report.verdict.failed else "ok") + "\n")


@click.command("verify")
@options.job_id_option("The apply job to check.", required=True)
@click.option(
    "--vars",
    "dbt_vars",
    default=None,
    envvar="RECON_DBT_VARS",
    show_envvar=True,
    help="dbt vars (YAML/JSON) for recomputing the diff, as given to `dbt run --vars`.",
)
@click.option(
    "--select",
    "dbt_select",
    default=None,
    envvar="RECON_DBT_SELECT",
    show_envvar=True,
    help="dbt selection to recompute (default: the whole project).",
)
@click.option(
    "--recompute/--no-recompute",
    default=True,
    show_default=True,
    envvar="RECON_VERIFY_RECOMPUTE",
    show_envvar=True,
    help="Run dbt first (in this process); --no-recompute checks against the diff table as it is.",
)
@options.output_option(
    "one JSON object on stdout: the counts per class and every person not ok (`persons`); logs stay on "
    "stderr."
)
@click.option("--json", "as_json", is_flag=True, help="Shorthand for --output json.")
@options.class_sample_option
def verify(
    job_id: str,
    dbt_vars: str | None,
    dbt_select: str | None,
    recompute: bool,
    output: str,
    as_json: bool,
    sample: int,
) -> None:
    """Check that the job's updates reached ClickHouse and that the recomputed diff no longer lists them.

    Prints the count per class and a sample of the persons in each class but ok (--sample); --output
    json lists every one.

    Exit codes: 0 nothing unexpected; 1 persons not ingested or still differing; 2 bad usage.
    """
    try:
        report = verify_job(job_id, dbt_vars, dbt_select, recompute)
    except RecomputeFailed as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if as_json or output == "json":
            _write_json(sys.stdout, report)
        else:
            _write_human(sys.stdout, report, sample)
    finally:
        report.findings.close()
    sys.exit(1 if report.verdict.failed else 0)
