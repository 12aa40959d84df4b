"""Command-line options shared by several commands, each defined once.

Every option keeps its name, environment variable (shown in `--help`), default and type wherever it is
used. Where commands word the help differently, the option is a small factory taking the
command-specific part of the help text; otherwise it is a ready `click.option` decorator.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

# Job ids (`--job-id`, restore's `--restore-job-id`) are recorded in backups, outbox and ledger. Matched
# against the whole string: `$` alone would accept a trailing newline.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


def validate_job_id(value: str | None, param_hint: str) -> None:
    """A usage error (exit 2) unless `value` is None or a well-formed job id."""
    if value is not None and not JOB_ID.fullmatch(value):
        raise click.BadParameter(
            f"{value!r}: letters, digits and . _ : - only, starting with a letter or digit (at most 200)",
            param_hint=param_hint,
        )


def _job_id_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    validate_job_id(value, "--job-id")
    return value


def job_id_option(help: str, *, required: bool = False) -> Callable[[F], F]:
    """`--job-id` (RECON_JOB_ID): the job a command runs as, or works on."""
    return click.option(
        "--job-id",
        required=required,
        envvar="RECON_JOB_ID",
        show_envvar=True,
        default=None,
        callback=_job_id_callback,
        help=help,
    )


def dry_run_option(help: str) -> Callable[[F], F]:
    """`--dry-run` (RECON_DRY_RUN): report what would change, write nothing."""
    return click.option("--dry-run", is_flag=True, envvar="RECON_DRY_RUN", show_envvar=True, help=help)


def team_ids_option(default_help: str) -> Callable[[F], F]:
    """`--team-id` (RECON_TEAM_IDS, repeatable) into `team_ids`; `default_help` says which teams are
    taken without it and which ids are an error."""
    return click.option(
        "--team-id",
        "team_ids",
        multiple=True,
        type=click.IntRange(1, 2**63 - 1),  # team ids are positive Postgres bigints
        envvar="RECON_TEAM_IDS",
        show_envvar=True,
        help="Only these teams (repeatable; the env var takes a space-separated list). " + default_help,
    )


def batch_size_option(note: str = "") -> Callable[[F], F]:
    """`--batch-size` (RECON_BATCH_SIZE): persons per commit; `note` is appended to the help."""
    return click.option(
        "--batch-size",
        type=click.IntRange(min=0),
        default=100,
        show_default=True,
        envvar="RECON_BATCH_SIZE",
        show_envvar=True,
        help="Commit every N processed persons; 0 = one commit per team" + (f" {note}" if note else "") + ".",
    )


def output_option(json_help: str) -> Callable[[F], F]:
    """`--output human|json` (RECON_OUTPUT); `json_help` describes the JSON output."""
    return click.option(
        "--output",
        type=click.Choice(["human", "json"]),
        default="human",
        show_default=True,
        envvar="RECON_OUTPUT",
        show_envvar=True,
        help=f"json: {json_help}",
    )


def sample_option(what: str) -> Callable[[F], F]:
    """`--sample` (RECON_SAMPLE): how many `what` persons per team human output shows."""
    return click.option(
        "--sample",
        type=click.IntRange(min=0),
        default=3,
        show_default=True,
        envvar="RECON_SAMPLE",
        show_envvar=True,
        help=f"Human output: {what} persons per team shown with before/after properties.",
    )


class_sample_option = click.option(
    "--sample",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    # Its own variable: apply's and restore's --sample (RECON_SAMPLE) counts persons per team, default 3.
    envvar="RECON_VERIFY_SAMPLE",
    show_envvar=True,
    help="Human output: persons shown per class (one line each; 0 = counts only).",
)


class FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses inf and nan (which pass `min`/`max` checks or compare false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


publish_timeout_option = click.option(
    "--publish-timeout",
    type=FiniteFloat(min=1, max=86_400),
    default=30.0,
    show_default=True,
    envvar="RECON_PUBLISH_TIMEOUT",
    show_envvar=True,
    help="Seconds Kafka may take to confirm a message before it stays in the outbox for the next run.",
)


max_rate_option = click.option(
    "--max-rate",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    envvar="RECON_MAX_RATE",
    show_envvar=True,
    help="At most N persons per second, enforced across batches and teams (waiting before a batch's "
    "rows are locked), to protect the live database. Default: unlimited. Progress lines on stderr show "
    "the rate and an ETA.",
)
