"""The `runner` command line.

Exit codes (all commands): 0 success; 1 the work ran but at least one team failed (or, for `verify`,
differences remain; for `apply`/`restore`/`outbox`, messages remain quarantined or unpublished), or an
unexpected error (one line; `--debug` shows the traceback); 2 bad usage or configuration, nothing
written.

Everything the process prints goes through `runner.config.redact` (passwords masked), and every command that
uses the stores first prints on stderr which Postgres, Kafka and ClickHouse they are.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

import click

from runner import __version__
from runner.config import redact, settings
from runner.config.settings import ConfigError

ENV_DEBUG = "RECON_DEBUG"

# Every command, explicitly: name -> (module, attribute). A command's module is imported only when that
# command runs (or help lists it), so production commands never import the local-only tooling in
# `runner.local`. A module that is missing or lacks its attribute is an error, never a skipped command.
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("runner.local.stack.cli", "stack"),  # local only
    "warehouse": ("runner.local.warehouse_cli", "warehouse"),  # local only
    "demo": ("runner.local.seed.cli", "demo"),  # local only
    "db": ("runner.commands.db", "db"),
    "models": ("runner.commands.models", "models"),
    "apply": ("runner.commands.apply", "apply"),
    "verify": ("runner.commands.verify", "verify"),
    "restore": ("runner.commands.restore", "restore"),
    "schedule": ("runner.commands.schedule", "schedule"),
    "report": ("runner.commands.report", "report"),
    "outbox": ("runner.commands.outbox", "outbox_group"),
}
# Commands that print their targets themselves (`schedule`: the Postgres variable is in its config) or
# use none (`stack`).
_NO_TARGET_LINE = {"stack", "schedule"}


def load_command(name: str) -> click.Command:
    """Import the module registered for `name` and return its command; any failure raises."""
    module_name, attr = COMMANDS[name]
    module = importlib.import_module(module_name)
    command = getattr(module, attr, None)
    if not isinstance(command, click.Command):
        raise RuntimeError(f"command {name!r}: {module_name}.{attr} is not a click command")
    return command


class RunnerGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        return load_command(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name not in _NO_TARGET_LINE and not ctx.resilient_parsing and not _asks_help(rest):
            # Resolving checks the targets (partial production settings exit 2 here, before any work).
            click.echo(settings.targets().describe(), err=True)
        return name, command, rest

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        redact.install()
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"Error: {redact.text(str(exc))}", err=True)
            sys.exit(2)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.meta.get(ENV_DEBUG) or os.environ.get(ENV_DEBUG, "").lower() in ("1", "true", "yes"):
                raise  # printed through the redacting stderr
            lines = str(exc).strip().splitlines()
            detail = f": {redact.text(lines[0])}" if lines else ""
            click.echo(f"Error: unexpected {type(exc).__name__}{detail}", err=True)
            click.echo(f"Run again with --debug (or {ENV_DEBUG}=1) to see the traceback.", err=True)
            sys.exit(1)


def _asks_help(args: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in args)


@click.group(
    cls=RunnerGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110}
)
@click.version_option(__version__, prog_name="runner")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    envvar="RECON_LOG_LEVEL",
    show_envvar=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Log verbosity; logs always go to stderr.",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar=ENV_DEBUG,
    show_envvar=True,
    help="Show the full traceback of an unexpected error (passwords still masked).",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, debug: bool) -> None:
    """recon runner: repair PostHog person properties lost during a bug window.

    Typical flow: `runner stack up` (local only), `dbt run --vars ...` to compute the diff,
    `runner apply --dry-run`, `runner apply`, `runner verify`, and if needed `runner restore`.
    """
    ctx.meta[ENV_DEBUG] = debug
    redact.install()  # before logging takes its stream
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, log_level.upper())))
