"""`runner stack up | down | status | env`: the click commands (the work is in `lifecycle`)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import click

from runner.config import settings
from runner.local.stack import lifecycle, stack_file
from runner.local.stack.processes import StackError

_output_option = click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one machine-readable object on stdout.",
)
_state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=settings.ENV_STATE_DIR,
    show_envvar=True,
    default=None,
    help="Where stack.json, the Postgres cluster and the broker log live [default: .recon in the project].",
)


@click.group("stack")
def stack() -> None:
    """Local throwaway Postgres and Kafka (Tansu) on loopback ports, for development and tests."""


@stack.command("up")
@_state_option
@_output_option
def up_cmd(state_dir: Path | None, output: str) -> None:
    """Start the stack (idempotent: prints the running one if it is already up)."""
    state = stack_file.state_dir(state_dir)
    try:
        info, started = lifecycle.ensure_up(state)
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps({**info, "started": started}, indent=2))
        return
    click.echo("started" if started else "already running")
    click.echo(f"postgres: {info['postgres']['url']}  (data {info['postgres']['data_dir']})")
    click.echo(f"kafka:    {info['kafka']['bootstrap_servers']}  (topic {info['kafka']['topic']})")
    click.echo(f'settings: {stack_file.path(state)}  (for a shell: eval "$(runner stack env)")')


@stack.command("down")
@_state_option
@click.option("--purge", is_flag=True, help="Also delete the Postgres data directory and the broker log.")
def down_cmd(state_dir: Path | None, purge: bool) -> None:
    """Stop the stack; no process and no port remain."""
    try:
        stopped = lifecycle.down(state_dir, purge=purge)
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        raise click.ClickException(str(exc)) from exc
    parts = [name for name, was in stopped.items() if was]
    click.echo(f"stopped: {', '.join(parts)}" if parts else "nothing was running")
    if purge:
        click.echo("data removed")


@stack.command("status")
@_state_option
@_output_option
def status_cmd(state_dir: Path | None, output: str) -> None:
    """Show whether Postgres and Kafka run. Exit code 0 when both run, 1 otherwise."""
    info = lifecycle.status(state_dir)
    if output == "json":
        click.echo(json.dumps(info, indent=2))
    else:
        for name, key in (("postgres", "url"), ("kafka", "bootstrap_servers")):
            part = info[name]
            state = "running" if part["running"] else "stopped"
            where = f"  {part[key]}" if part[key] else ""
            click.echo(f"{name}: {state}{where}")
    raise SystemExit(0 if info["running"] else 1)


@stack.command("env")
@_state_option
def env_cmd(state_dir: Path | None) -> None:
    """Print `export` lines for a shell: eval "$(runner stack env)"."""
    state = stack_file.state_dir(state_dir)
    info = stack_file.read(state)
    if not info or not all(lifecycle.running(info)):
        raise settings.ConfigError(f"no local stack is running in {state} (start one with `runner stack up`)")
    for line in lifecycle.env_lines(info):
        click.echo(line)
