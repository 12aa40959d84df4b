"""`runner restore`: undo a job from its backup rows, publishing the restored persons to Kafka.

Exit codes (as apply's): 0 every team succeeded; 1 at least one team failed or is incomplete (entries
not restored: version_conflict, invalid_value), or the restore stopped early (unpublished messages of an
earlier run could not be published, or Postgres was lost), or messages of the restore are quarantined
(see `runner outbox`); 2 bad usage or configuration (unknown strategy, unknown job id, filters matching
no backup row), nothing written.

The job is `runner.jobs.restore` (started by `runner.jobs.launch`), its JSON lines `runner.jobs.output`;
this module is the command and its human output.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import IO, Any
from uuid import UUID

import click

from runner.commands import options
from runner.jobs.launch import run_restore
from runner.jobs.output import RestoreJsonSink
from runner.jobs.restore import (
    INVALID_VALUE,
    NOT_FOUND,
    RESTORED,
    SKIPPED,
    TEAM_FAILED,
    VERSION_CONFLICT,
    PersonRestore,
    RestoreConfig,
    RestoreRun,
    TeamRestore,
    default_restore_job_id,
)
from runner.rules.merge import display_default
from runner.rules.restore import STRATEGIES
from runner.stores import ledger, metrics, outbox

log = logging.getLogger("runner.restore")


def _shown(properties: dict[str, Any] | None) -> str:
    return json.dumps(properties, sort_keys=True, default=display_default)


# --- human output ----------------------------------------------------------------------------------


class HumanRestoreSink:
    """What is (or would be) restored: per team a sample of persons with before/after properties, then
    a table of counts per team, the metrics and how to undo the restore."""

    def __init__(self, out: IO[str], sample: int, progress: bool):
        self.out = out
        self.sample = sample
        self.progress = progress
        self._bar: Any = None
        self._pending: list[PersonRestore] = []
        self._kept: list[PersonRestore] = []
        self._pending_count = 0

    def restore_started(self, run: RestoreRun, teams: Sequence[tuple[int, int]]) -> None:
        cfg = run.config
        total = sum(n for _, n in teams)
        what = "dry run, nothing will be written" if cfg.dry_run else f"as job {cfg.restore_job_id}"
        self.out.write(
            f"restore of job {cfg.job_id} ({what}), strategy {cfg.strategy}: "
            f"{total} backup rows in {len(teams)} teams\n"
        )
        self.out.flush()
        if self.progress:
            self._bar = click.progressbar(length=max(total, 1), label="persons", file=sys.stderr)
            self._bar.__enter__()

    def person(self, result: PersonRestore) -> None:
        self._pending_count += 1
        if result.outcome == RESTORED and len(self._kept) + len(self._pending) < self.sample:
            self._pending.append(result)

    def batch_closed(self) -> None:
        self._kept += self._pending
        self._advance()

    def batch_failed(self) -> None:
        self._advance()

    def _advance(self) -> None:
        self._pending = []
        if self._bar is not None:
            self._bar.update(self._pending_count)
        self._pending_count = 0

    def team_done(self, team: TeamRestore) -> None:
        kept, self._kept = self._kept, []
        for i, r in enumerate(kept):
            if i == 0:
                self.out.write(f"\nteam {team.team_id}: sample of restored persons\n")
            note = " (restored by an earlier attempt of this restore job)" if r.already_done else ""
            self.out.write(
                f"  person {r.item.uuid} (id {r.item.person_id}): "
                f"version {r.version_before} -> {r.version_after}{note}\n"
            )
            if not r.already_done:
                self.out.write(f"    before: {_shown(r.properties_before)}\n")
            self.out.write(f"    after:  {_shown(r.properties_after)}\n")
        self.out.flush()

    def restore_finished(self, run: RestoreRun) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
        cfg = run.config
        self.out.write("\n" + _team_table(run) + "\n")
        for team in run.teams:
            if team.error:
                self.out.write(
                    f"team {team.team_id} {team.status}: {team.error.removeprefix(team.status + ': ')}\n"
                )
            for person_uuid, outcome, reason in team.failures[:10]:
                self.out.write(f"  person {person_uuid}: {outcome}: {reason}\n")
        if run.error:
            self.out.write(f"restore failed: {run.error}\n")
        if run.total("already_done"):
            self.out.write(
                f"{run.total('already_done')} persons were restored by an earlier attempt of "
                f"{cfg.restore_job_id} (not written again)\n"
            )
        if run.published_backlog:
            self.out.write(f"published {run.published_backlog} messages left unpublished by earlier runs\n")
        if run.quarantined:
            self.out.write(outbox.quarantine_note(cfg.restore_job_id, run.quarantined) + "\n")
        self.out.write(
            "metrics, one series per team (chunk_id=team_<id>), summed here"
            + (" (dry run: not written)" if cfg.dry_run else "")
            + ":\n"
        )
        for (name, labels), (total, teams) in _metric_totals(run.metrics).items():
            self.out.write(f"  {name}{{{labels}}} {total:g}  ({teams} teams)\n")
        if run.failed:
            verdict = (
                f"FAILED: see the errors above; re-run with --restore-job-id {cfg.restore_job_id} to resume"
            )
        elif cfg.dry_run:
            verdict = "dry run: nothing was written"
        elif run.quarantined:
            verdict = "restored in Postgres, but messages are quarantined (see above)"
        elif run.total("updated") == 0:
            verdict = "done; nothing needed restoring, nothing was written"
        else:
            verdict = f"done; undo it with: runner restore --job-id {cfg.restore_job_id}"
        self.out.write(f"restore job {cfg.restore_job_id}: {verdict}\n")
        self.out.flush()


def _metric_totals(counters: Sequence[metrics.Counter]) -> dict[tuple[str, str], tuple[float, int]]:
    """(name, labels but chunk_id) -> (sum, number of teams), in first-seen order."""
    totals: dict[tuple[str, str], tuple[float, int]] = {}
    for counter in counters:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(counter.labels.items()) if k != "chunk_id")
        total, teams = totals.get((counter.name, labels), (0.0, 0))
        totals[(counter.name, labels)] = (total + counter.increment, teams + 1)
    return totals


def _team_table(run: RestoreRun) -> str:
    dry_run = run.config.dry_run

    def counts(teams: Sequence[TeamRestore]) -> list[str]:
        restored = sum(t.outcomes.get(RESTORED, 0) if dry_run else t.updated for t in teams)
        by_outcome = [
            sum(t.outcomes.get(o, 0) for t in teams)
            for o in (SKIPPED, NOT_FOUND, VERSION_CONFLICT, INVALID_VALUE)
        ]
        return [str(sum(t.processed for t in teams)), str(restored), *map(str, by_outcome)] + [
            str(sum(t.outcomes.get(TEAM_FAILED, 0) for t in teams)),
            str(sum(t.commits for t in teams)),
            f"{sum(t.duration_seconds for t in teams):.1f}",
        ]

    header = ["team", "status", "processed", "would restore" if dry_run else "restored"]
    header += ["unchanged", "not found", "conflict", "invalid", "failed", "commits", "seconds"]
    body = [[str(t.team_id), t.status, *counts([t])] for t in run.teams]
    ok = sum(t.status == ledger.SUCCEEDED for t in run.teams)
    body.append(["total", f"{ok}/{len(run.teams)} ok", *counts(run.teams)])
    widths = [max(len(row[col]) for row in [header, *body]) for col in range(len(header))]
    lines = []
    for row in [header, *body]:
        cells = [
            f"{cell:<{w}}" if col < 2 else f"{cell:>{w}}"
            for col, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- command ---------------------------------------------------------------------------------------


@click.command("restore")
@options.job_id_option(
    "The job to undo: its backup rows (posthog_person_reconciliation_backup.job_id) are restored. "
    "A restore job id works too (undoes that restore).",
    required=True,
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="keep_newer",
    show_default=True,
    envvar="RECON_RESTORE_STRATEGY",
    show_envvar=True,
    help="keep_newer: undo the job's own keys that still hold what the job wrote. restore_wins: undo "
    "every key the job changed, over later changes to those keys; keys it never touched keep their "
    "current values. full_overwrite: write the backed-up state verbatim, discarding every later change "
    "to any key.",
)
@options.team_ids_option("Default: every team of the job. A team without backup rows is an error.")
@click.option(
    "--person-id",
    "person_ids",
    multiple=True,
    type=int,
    envvar="RECON_PERSON_IDS",
    show_envvar=True,
    help="Only these persons, by Postgres pk (posthog_person.id; repeatable). A pk without backup row "
    "is an error.",
)
@click.option(
    "--person-uuid",
    "person_uuids",
    multiple=True,
    type=click.UUID,
    envvar="RECON_PERSON_UUIDS",
    show_envvar=True,
    help="Only these persons, by uuid (repeatable). A uuid without backup row is an error.",
)
@options.dry_run_option(
    "Report what would be restored; write nothing at all (Postgres, Kafka, ledger, metrics)."
)
@click.option(
    "--restore-job-id",
    envvar="RECON_RESTORE_JOB_ID",
    show_envvar=True,
    default=None,
    help="Job id of this restore, recorded in its own backup rows, outbox and ledger (so `runner restore "
    "--job-id <it>` undoes the restore). Default: restore-<job id>-<UTC time>, printed. Re-use it to "
    "resume a crashed or failed restore: persons it restored are not written again.",
)
@click.option(
    "--backup-batch-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    envvar="RECON_BACKUP_BATCH_SIZE",
    show_envvar=True,
    help="Backup rows read per query (keyset pages by team and person).",
)
@options.batch_size_option("(as the original)")
@options.output_option("JSON lines on stdout, one per backup entry and a final summary; logs stay on stderr.")
@options.sample_option("restored")
@options.publish_timeout_option
@options.max_rate_option
def restore(
    job_id: str,
    strategy: str,
    team_ids: tuple[int, ...],
    person_ids: tuple[int, ...],
    person_uuids: tuple[UUID, ...],
    dry_run: bool,
    restore_job_id: str | None,
    backup_batch_size: int,
    batch_size: int,
    output: str,
    sample: int,
    publish_timeout: float,
    max_rate: float | None,
) -> None:
    """Restore the persons a job changed to the state its backup rows recorded, and publish them.

    Backup rows are read in pages; per batch the persons' rows are locked, the strategy decides what to
    put back, and the update (version + 1), the restore's own backup row and an outbox row are written
    in one transaction, committed, then published to Kafka. Unpublished messages of earlier runs are
    published first.

    A message Kafka rejects for good is quarantined in the outbox (see `runner outbox`); its person stays
    restored and counted so.

    Outcomes per backup entry: restored, skipped, not_found, version_conflict (the row stayed held by
    another transaction, or changed under the write), invalid_value (Postgres refused the value: the
    entry alone fails, with its reason), team_failed. A team with version_conflict or invalid_value
    entries is `incomplete`.

    Exit codes: 0 every team succeeded; 1 a team failed or is incomplete, messages of this restore are
    quarantined, or the restore stopped early (the summary and the ledger count what was committed); 2
    bad usage or configuration (unknown strategy or job id, filters matching nothing), nothing written.
    """
    options.validate_job_id(restore_job_id, "--restore-job-id")
    config = RestoreConfig(
        job_id=job_id,
        restore_job_id=restore_job_id or default_restore_job_id(job_id),
        strategy=strategy,
        dry_run=dry_run,
        team_ids=tuple(dict.fromkeys(team_ids)),
        person_ids=tuple(dict.fromkeys(person_ids)),
        person_uuids=tuple(dict.fromkeys(person_uuids)),
        backup_batch_size=backup_batch_size,
        batch_size=batch_size,
        publish_timeout=publish_timeout,
        max_rate=max_rate,
    )
    log.info("restore job id: %s%s", config.restore_job_id, " (dry run)" if dry_run else "")
    sink = (
        RestoreJsonSink(sys.stdout)
        if output == "json"
        else HumanRestoreSink(sys.stdout, sample, progress=sys.stderr.isatty())
    )
    run = run_restore(config, sink)
    sys.exit(1 if run.failed or run.quarantined else 0)
