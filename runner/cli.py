"""The `runner` command line.

Exit codes (all commands): 0 success; 1 the work ran but at least one team failed (or, for `verify`,
differences remain); 2 bad usage or configuration, nothing written.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from runner import __version__
from runner.settings import ConfigError

# Every command, explicitly: name -> (module, attribute). A command's module is imported only when that
# command runs (or help lists it), so production commands never import the local-only tooling in
# `runner.local`. A module that is missing or lacks its attribute is an error, never a skipped command.
COMMANDS: dict[str, tuple[str, str]] = {
    "stack": ("runner.local.stack", "stack"),  # local only
    "warehouse": ("runner.local.warehouse_cli", "warehouse"),  # local only
    "demo": ("runner.local.seed", "demo"),  # local only
    "db": ("runner.pg_schema", "db"),
    "models": ("runner.dbt_cli", "models"),
    "apply": ("runner.apply_cli", "apply"),
    "verify": ("runner.verify", "verify"),
    "restore": ("runner.restore_cli", "restore"),
    "schedule": ("runner.schedule", "schedule"),
    "report": ("runner.report", "report"),
}


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

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)


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
def main(log_level: str) -> None:
    """recon runner: repair PostHog person properties lost during a bug window.

    Typical flow: `runner stack up` (local only), `dbt run --vars ...` to compute the diff,
    `runner apply --dry-run`, `runner apply`, `runner verify`, and if needed `runner restore`.
    """
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
