"""`runner outbox`: see, retry and discard the outbox messages that have not reached Kafka.

Messages are `pending` (not confirmed yet: the next apply or restore publishes them first) or
`quarantined` (Kafka rejected them for good, with the error recorded; they never block a run and wait
here). `discarded` ones were set aside for good by `discard` and are kept with when and why; `published`
ones are never listed. States are described in `runner.stores.outbox`.

Exit codes: 0 nothing remains (list: no pending or quarantined message matched; retry: every message
published; discard: done); 1 something remains (listed, or not published by the retry); 2 bad usage or
configuration (no selection, ids not in the selected states, Postgres or Kafka unreachable), nothing
changed.

The jobs are `runner.jobs.outbox`; this module is the commands and their output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

from runner.commands import options
from runner.jobs import outbox as outbox_jobs
from runner.stores import outbox

F = TypeVar("F", bound=Callable[..., Any])

ERROR_WIDTH = 100  # error text shown per line in the human table (JSON has it whole)


def _selection_options(default_statuses: tuple[str, ...], statuses: tuple[str, ...]) -> Callable[[F], F]:
    """--id / --job-id / --team-id / --status, shared by the three commands."""

    def decorate(func: F) -> F:
        func = click.option(
            "--status",
            "statuses",
            multiple=True,
            type=click.Choice(statuses),
            help=f"Only messages in these states (repeatable). Default: {', '.join(default_statuses)}.",
        )(func)
        func = click.option("--team-id", type=int, default=None, help="Only messages of this team.")(func)
        # No environment variable here: a RECON_JOB_ID left from an apply must never select what
        # `discard` sets aside.
        func = click.option(
            "--job-id",
            default=None,
            help="Only messages of this job (apply's --job-id, restore's --restore-job-id).",
        )(func)
        func = click.option(
            "--id",
            "ids",
            multiple=True,
            type=click.IntRange(min=1),
            help="Only these outbox messages, by id (repeatable; ids as `runner outbox list` shows them).",
        )(func)
        return func

    return decorate


def _selection(
    ids: tuple[int, ...],
    job_id: str | None,
    team_id: int | None,
    statuses: tuple[str, ...],
    default: tuple[str, ...],
) -> outbox.Selection:
    options.validate_job_id(job_id, "--job-id")
    return outbox.Selection(
        statuses=tuple(dict.fromkeys(statuses)) or default,
        ids=tuple(dict.fromkeys(ids)),
        job_id=job_id,
        team_id=team_id,
    )


def _require_explicit(selection: outbox.Selection, select_all: bool) -> None:
    """retry and discard act only on what was named: ids, a job, a team, or --all (not with the others)."""
    named = bool(selection.ids) or selection.job_id is not None or selection.team_id is not None
    if select_all and named:
        raise click.UsageError(
            "--all selects every message: give it alone, or select by --id/--job-id/--team-id"
        )
    if not select_all and not named:
        raise click.UsageError("select the messages: --id, --job-id, --team-id, or --all")


@click.group("outbox")
def outbox_group() -> None:
    """Outbox messages not in Kafka: list, retry or discard pending and quarantined messages.

    A message Kafka rejects for good (e.g. over its 1 MB size limit) is quarantined with its error and
    never blocks later runs; its person is committed in Postgres. Pending messages (broker outage,
    crash) are published by the next apply or restore anyway.

    Exit codes: 0 nothing remains; 1 messages remain (listed, or not published by a retry); 2 bad usage
    or configuration, nothing changed.
    """


@outbox_group.command("list")
@_selection_options(outbox.OPEN_STATUSES, (outbox.QUARANTINED, outbox.PENDING, outbox.DISCARDED))
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="At most this many messages listed (the counts cover all of them).",
)
@options.output_option("one JSON document on stdout: counts per state and the messages (no payloads).")
def list_cmd(
    ids: tuple[int, ...],
    job_id: str | None,
    team_id: int | None,
    statuses: tuple[str, ...],
    limit: int,
    output: str,
) -> None:
    """List quarantined and pending messages (discarded ones with --status discarded), oldest first.

    Exit codes: 0 no quarantined or pending message matched; 1 some did; 2 bad usage or configuration.
    """
    selection = _selection(ids, job_id, team_id, statuses, outbox.OPEN_STATUSES)
    counts, messages = outbox_jobs.list_messages(selection, limit)
    if output == "json":
        json.dump({"counts": counts, "messages": [_message_json(m) for m in messages]}, sys.stdout)
        sys.stdout.write("\n")
    else:
        _write_table(sys.stdout, messages, counts)
    sys.exit(1 if any(counts.get(status) for status in outbox.OPEN_STATUSES) else 0)


def _message_json(m: outbox.Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "job_id": m.job_id,
        "team_id": m.team_id,
        "person_uuid": m.person_uuid,
        "version": m.version,
        "bytes": m.bytes,
        "status": m.status,
        "created_at": m.created_at.isoformat(),
        "quarantined_at": m.quarantined_at.isoformat() if m.quarantined_at else None,
        "error": m.error,
        "discarded_at": m.discarded_at.isoformat() if m.discarded_at else None,
        "discard_reason": m.discard_reason,
    }


def _write_table(out: IO[str], messages: list[outbox.Message], counts: dict[str, int]) -> None:
    headers = ["id", "job", "team", "person", "version", "bytes", "status", "since", "error"]
    rows = []
    for m in messages:
        note = m.error or ""
        if m.status == outbox.DISCARDED and m.discard_reason:
            note = f"discarded: {m.discard_reason}; {note}" if note else f"discarded: {m.discard_reason}"
        rows.append(
            [
                str(m.id),
                m.job_id,
                str(m.team_id),
                m.person_uuid,
                str(m.version),
                str(m.bytes),
                m.status,
                m.since.strftime("%Y-%m-%d %H:%M:%S"),
                note if len(note) <= ERROR_WIDTH else note[: ERROR_WIDTH - 3] + "...",
            ]
        )
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    total = sum(counts.values())
    shown = f" ({len(messages)} shown, see --limit)" if len(messages) < total else ""
    states = ", ".join(f"{n} {status}" for status, n in counts.items())
    out.write(f"{total} message{'s' if total != 1 else ''}{shown}: {states}\n")


@outbox_group.command("retry")
@_selection_options(outbox.OPEN_STATUSES, outbox.OPEN_STATUSES)
@click.option("--all", "select_all", is_flag=True, help="Every quarantined and pending message.")
@click.option(
    "--message-max-bytes",
    type=click.IntRange(min=1000),
    default=None,
    help="The client's size limit for this retry (librdkafka's message.max.bytes, default 1000000), for "
    "a broker and topic configured to accept larger messages.",
)
@options.publish_timeout_option
def retry_cmd(
    ids: tuple[int, ...],
    job_id: str | None,
    team_id: int | None,
    statuses: tuple[str, ...],
    select_all: bool,
    message_max_bytes: int | None,
    publish_timeout: float,
) -> None:
    """Produce the selected quarantined or pending messages again.

    A message Kafka confirms is marked published (and leaves the quarantine); one rejected for good again
    stays quarantined with the new error; one not confirmed in time stays as it was. Discarded messages
    are never retried. Sending a message twice is harmless: ClickHouse keeps a person's highest version.

    Exit codes: 0 every selected message published (or none selected by --job-id/--team-id/--all); 1 some
    were not; 2 bad usage or configuration (no selection, --id not quarantined or pending), nothing sent.
    """
    selection = _selection(ids, job_id, team_id, statuses, outbox.OPEN_STATUSES)
    _require_explicit(selection, select_all)

    def started(selected: dict[str, int]) -> None:
        total = sum(selected.values())
        states = ", ".join(f"{n} {status}" for status, n in selected.items())
        click.echo(f"retrying {total} message{'s' if total != 1 else ''} ({states})")

    result = outbox_jobs.retry(
        selection, publish_timeout=publish_timeout, message_max_bytes=message_max_bytes, on_start=started
    )
    if not sum(result.selected.values()):
        click.echo("nothing to retry")
        return
    line = f"{result.published} published, {result.quarantined} quarantined"
    if result.unconfirmed > 0:
        line += f", {result.unconfirmed} not confirmed by Kafka (left as they were)"
    click.echo(line)
    for team, error in sorted(result.failures.items()):
        click.echo(f"team {team}: {error}", err=True)
    if result.quarantined:
        click.echo("see their errors with `runner outbox list --status quarantined`", err=True)
    sys.exit(0 if result.complete else 1)


@outbox_group.command("discard")
@_selection_options((outbox.QUARANTINED,), outbox.OPEN_STATUSES)
@click.option("--all", "select_all", is_flag=True, help="Every message in the selected states.")
@click.option("--reason", default=None, help="Why, recorded with the messages.")
def discard_cmd(
    ids: tuple[int, ...],
    job_id: str | None,
    team_id: int | None,
    statuses: tuple[str, ...],
    select_all: bool,
    reason: str | None,
) -> None:
    """Set the selected messages aside for good: they are never published nor retried.

    The rows are kept (marked discarded, with when and --reason), never deleted; `runner outbox list
    --status discarded` shows them. Their persons are committed in Postgres but ClickHouse does not get
    these versions from recon: `runner verify` reports them (`not_ingested`). Only quarantined messages
    unless --status pending is given.

    Exit codes: 0 done; 2 bad usage (no selection, --id not in the selected states), nothing discarded.
    """
    selection = _selection(ids, job_id, team_id, statuses, (outbox.QUARANTINED,))
    _require_explicit(selection, select_all)
    discarded = outbox_jobs.discard(selection, reason)
    if not discarded:
        click.echo("nothing to discard")
        return
    shown = ", ".join(map(str, discarded[:20])) + (" ..." if len(discarded) > 20 else "")
    click.echo(f"discarded {len(discarded)} message{'s' if len(discarded) != 1 else ''}: {shown}")
