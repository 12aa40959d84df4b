"""`runner apply`: apply the diff table to Postgres and publish the updated persons to Kafka.

Exit codes: 0 every team succeeded; 1 at least one team failed or is incomplete (some of its persons
were not applied: `version_conflict` after the retries, `invalid_value`), or the run stopped early
(unpublished messages of an earlier run could not be published, or Postgres was lost), or messages of
the job are quarantined (see `runner outbox`); 2 bad usage or configuration, nothing written.

The job is `runner.jobs.apply` (started by `runner.jobs.launch`), its JSON lines `runner.jobs.output`;
this module is the command and its human output.
"""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Sequence
from typing import IO, Any

import click

from runner.commands import options
from runner.jobs.apply import (
    INVALID_VALUE,
    NO_CHANGES,
    NOT_FOUND,
    SUCCESS,
    TEAM_FAILED,
    VERSION_CONFLICT,
    ApplyConfig,
    PersonResult,
    RunResult,
    TeamResult,
)
from runner.jobs.launch import run_apply
from runner.jobs.output import JsonSink, semantics_of
from runner.rules.merge import display_default
from runner.stores import diffs, ledger, outbox

log = logging.getLogger("runner.apply")

SHOWN_FAILURES = 10  # persons not applied, listed per team in the human output

# --- human output ----------------------------------------------------------------------------------


def _shown(properties: dict[str, Any] | None) -> str:
    return json.dumps(properties, sort_keys=True, ensure_ascii=False, default=display_default)


class HumanSink:
    """Per-team samples as teams finish, then a table of every team, totals and metrics. A progress bar
    on stderr only when it is a terminal."""

    def __init__(self, out: IO[str], sample: int, progress: bool):
        self.out = out
        self.sample = sample
        self.progress = progress
        self._bar: Any = None
        self._staged_samples: list[PersonResult] = []
        self._samples: list[PersonResult] = []
        self._staged = 0
        self._dry_run = False

    def run_started(self, job_id: str, dry_run: bool, teams: Sequence[diffs.TeamSummary]) -> None:
        self._dry_run = dry_run
        mode = "dry run, nothing will be written" if dry_run else "apply"
        self.out.write(f"job {job_id} ({mode}): {len(teams)} teams, semantics {semantics_of(teams)}\n")
        self.out.flush()
        if self.progress:
            total = sum(t.persons_with_diff for t in teams)
            self._bar = click.progressbar(length=max(total, 1), label="persons", file=sys.stderr)
            self._bar.__enter__()

    def stage(self, result: PersonResult) -> None:
        self._staged += 1
        if result.outcome == SUCCESS and len(self._samples) + len(self._staged_samples) < self.sample:
            self._staged_samples.append(result)

    def batch_closed(self) -> None:
        self._samples.extend(self._staged_samples)
        self._finish_batch()

    def batch_failed(self) -> None:
        self._finish_batch()

    def _finish_batch(self) -> None:
        self._staged_samples = []
        if self._bar is not None:
            self._bar.update(self._staged)
        self._staged = 0

    def team_finished(self, team: TeamResult) -> None:
        samples, self._samples = self._samples, []
        if not samples:
            return
        what = "the persons it would update" if self._dry_run else "updated persons"
        self.out.write(f"\nteam {team.team_id}: sample of {what}\n")
        for r in samples:
            versions = f"version {r.version_before} -> {r.version_after}"
            note = " (already applied by this job)" if r.already_done else ""
            self.out.write(f"  person {r.item.person_uuid}: {versions}{note}\n")
            self.out.write(f"    before: {_shown(r.properties_before)}\n")
            self.out.write(f"    after:  {_shown(r.properties_after)}\n")
        self.out.flush()

    def run_finished(self, run: RunResult) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        update_header = "would update" if run.dry_run else "updated"
        headers = [
            "team",
            "status",
            "processed",
            update_header,
            "no change",
            "not found",
            "conflict",
            "invalid",
            "failed",
        ]
        headers += ["commits", "seconds"]
        rows = [
            [
                str(t.team_id),
                t.status,
                str(t.processed),
                str(t.outcomes.get(SUCCESS, 0) if run.dry_run else t.updated),
                str(t.outcomes.get(NO_CHANGES, 0)),
                str(t.outcomes.get(NOT_FOUND, 0)),
                str(t.outcomes.get(VERSION_CONFLICT, 0)),
                str(t.outcomes.get(INVALID_VALUE, 0)),
                str(t.outcomes.get(TEAM_FAILED, 0)),
                str(t.commits),
                f"{t.duration_seconds:.1f}",
            ]
            for t in run.teams
        ]
        total_updates = (
            sum(t.outcomes.get(SUCCESS, 0) for t in run.teams) if run.dry_run else run.total("updated")
        )
        rows.append(
            [
                "total",
                f"{sum(t.status == ledger.SUCCEEDED for t in run.teams)}/{len(run.teams)} ok",
                str(run.total("processed")),
                str(total_updates),
                *(str(sum(t.outcomes.get(o, 0) for t in run.teams)) for o in (NO_CHANGES, NOT_FOUND)),
                *(
                    str(sum(t.outcomes.get(o, 0) for t in run.teams))
                    for o in (VERSION_CONFLICT, INVALID_VALUE, TEAM_FAILED)
                ),
                str(run.total("commits")),
                f"{run.duration_seconds:.1f}",
            ]
        )
        widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
        self.out.write("\n")
        for row in [headers, *rows]:
            self.out.write(
                "  ".join(
                    cell.rjust(w) if i >= 2 else cell.ljust(w)
                    for i, (cell, w) in enumerate(zip(row, widths, strict=True))
                ).rstrip()
                + "\n"
            )
        for t in run.teams:
            if t.error:
                self.out.write(f"team {t.team_id} {t.status}: {t.error.removeprefix(t.status + ': ')}\n")
            for person_uuid, outcome, reason in t.failures[:SHOWN_FAILURES]:
                self.out.write(f"  person {person_uuid}: {outcome}: {reason}\n")
            if len(t.failures) > SHOWN_FAILURES:
                self.out.write(
                    f"  ... (the ledger lists up to {ledger.FAILURES_KEPT}; --output json lists all)\n"
                )
        if run.error:
            self.out.write(f"run failed: {run.error}\n")
        already = run.total("already_done")
        if already:
            self.out.write(
                f"{already} persons already applied by an earlier attempt of this job (not written again)\n"
            )
        if run.published_backlog:
            self.out.write(f"published {run.published_backlog} messages left unpublished by earlier runs\n")
        if run.quarantined:
            self.out.write(outbox.quarantine_note(run.job_id, run.quarantined) + "\n")
        self.out.write("metrics" + (" (dry run: not written)" if run.dry_run else "") + ":\n")
        for counter in run.metrics:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(counter.labels.items()))
            self.out.write(f"  {counter.name}{{{labels}}} {counter.increment:g}\n")
        verdict = "dry run: nothing was written" if run.dry_run else "done"
        if run.failed:
            verdict = "FAILED: see the errors above; re-run with the same --job-id to resume"
        elif run.quarantined:
            verdict = "done in Postgres, but messages are quarantined (see above)"
        self.out.write(f"job {run.job_id}: {verdict}\n")
        self.out.flush()


# --- command ---------------------------------------------------------------------------------------


@click.command("apply")
@options.dry_run_option(
    "Compute and report what would change; write nothing at all (Postgres, Kafka, ledger, metrics)."
)
@options.job_id_option(
    "Job id recorded in backups, outbox and ledger. Default: a new UUID, printed. "
    "Re-run with the same id to resume a crashed or failed job: persons it applied are not applied again."
)
@options.team_ids_option("Default: every team in the diff summary. A team not in the summary is an error.")
@options.batch_size_option()
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    envvar="RECON_PAGE_SIZE",
    show_envvar=True,
    help="Persons read from the diff table per query (and handled per round of statements).",
)
@click.option(
    "--backup/--no-backup",
    default=True,
    show_default=True,
    envvar="RECON_BACKUP_ENABLED",
    show_envvar=True,
    help="Write a backup row per updated person (the original's backup_enabled).",
)
@click.option(
    "--write-path",
    type=click.Choice(["set", "per-person"]),
    default="set",
    show_default=True,
    envvar="RECON_APPLY_WRITE_PATH",
    show_envvar=True,
    help="set: persons at their baseline version are locked, merged and written by one statement per "
    "chunk, the others (three-way merges, held rows, refused values) person by person. per-person: "
    "every person is locked, decided in Python and written (the path before the set-based one; same "
    "results, slower).",
)
@options.output_option("JSON lines on stdout, one per person and a final summary; logs stay on stderr.")
@options.sample_option("updated")
@options.publish_timeout_option
@options.max_rate_option
def apply(
    dry_run: bool,
    job_id: str | None,
    team_ids: tuple[int, ...],
    batch_size: int,
    page_size: int,
    backup: bool,
    write_path: str,
    output: str,
    sample: int,
    publish_timeout: float,
    max_rate: float | None,
) -> None:
    """Apply the diff table to Postgres (posthog_person) and publish each updated person to Kafka.

    Per team, in batches: lock the persons' rows, merge (simple or three-way), write the update
    (version + 1), a backup row and an outbox row in one transaction, commit, then publish. The
    persons still at the diff's baseline version are locked, merged and written by one statement per
    chunk (--write-path). Unpublished
    messages of earlier runs are published first.

    A message Kafka rejects for good (e.g. over its 1 MB size limit) is quarantined in the outbox with
    its error; its person stays committed and counted as updated, and later runs go on. See `runner
    outbox list --job-id <job>`.

    Outcomes per person: success, no_changes, not_found, version_conflict (its row was held by another
    transaction, or changed under the write, through the end-of-team retry that waits for the lock),
    invalid_value (Postgres cannot store a value: the person alone fails, with its reason),
    team_failed (its batch was rolled back). A team with version_conflict or invalid_value persons is
    `incomplete`.

    Exit codes: 0 every team succeeded; 1 a team failed or is incomplete, messages of this job are
    quarantined, or the run stopped early (earlier messages could not be published, or Postgres was
    lost: the summary and the ledger give what was committed); 2 bad usage or configuration, nothing
    written.
    """
    options.validate_job_id(job_id, "--job-id")
    job_id = job_id or str(uuid.uuid4())
    log.info("job id: %s%s", job_id, " (dry run)" if dry_run else "")
    config = ApplyConfig(
        job_id=job_id,
        dry_run=dry_run,
        team_ids=tuple(dict.fromkeys(team_ids)),
        batch_size=batch_size,
        page_size=page_size,
        backup=backup,
        publish_timeout=publish_timeout,
        max_rate=max_rate,
        person_details=None if output == "json" else sample,
        set_based=write_path == "set",
    )
    out = sys.stdout
    sink = JsonSink(out) if output == "json" else HumanSink(out, sample, progress=sys.stderr.isatty())
    result = run_apply(config, sink)
    sys.exit(1 if result.failed or result.quarantined else 0)
