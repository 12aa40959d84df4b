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

# (module, attribute): each module owns one command or group.
_COMMANDS = [
    ("runner.stack", "stack"),
    ("runner.pg_schema", "db"),
    ("runner.warehouse_cli", "warehouse"),
    ("runner.seed", "demo"),
    ("runner.dbt_cli", "models"),
    ("runner.apply_cli", "apply"),
    ("runner.verify", "verify"),
    ("runner.restore_cli", "restore"),
    ("runner.schedule", "schedule"),
    ("runner.report", "report"),
]


class RunnerGroup(click.Group):
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


def _register() -> None:
    for module_name, attr in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # command not built yet
            raise
        main.add_command(getattr(module, attr))


_register()
