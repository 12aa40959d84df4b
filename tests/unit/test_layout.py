"""Layout: production paths never import the local-only tooling; every registered command exists."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from runner import cli

PRODUCTION_COMMANDS = ["apply", "restore", "verify", "schedule", "report", "db", "models", "outbox"]
LOCAL_COMMANDS = ["stack", "warehouse", "demo"]

# Imports every production module and resolves every production command in a fresh interpreter, then
# prints the runner.local modules that got imported (there must be none).
_PROBE = """
import importlib, pathlib, sys
import click
import runner
from runner import cli
root = pathlib.Path(runner.__file__).parent
for path in sorted(root.rglob("*.py")):
    name = ".".join(("runner", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
    # runner.local is what must stay out; runner.orchestration needs the optional Dagster extra.
    if not name.startswith(("runner.local", "runner.orchestration", "runner.__main__")):
        importlib.import_module(name)
ctx = click.Context(cli.main)
for name in sys.argv[1:]:
    cli.main.get_command(ctx, name).to_info_dict(click.Context(cli.main.get_command(ctx, name)))
print(sorted(m for m in sys.modules if m.startswith("runner.local")))
"""


def test_production_paths_never_import_local_tooling() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, *PRODUCTION_COMMANDS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_command_registry_is_explicit_and_complete() -> None:
    assert sorted(cli.COMMANDS) == sorted(PRODUCTION_COMMANDS + LOCAL_COMMANDS)
    for name in cli.COMMANDS:
        command = cli.load_command(name)
        assert isinstance(command, click.Command)
        assert command.name == name
    for name in LOCAL_COMMANDS:
        assert cli.COMMANDS[name][0].startswith("runner.local.")
    for name in PRODUCTION_COMMANDS:
        assert not cli.COMMANDS[name][0].startswith("runner.local")


def test_missing_command_module_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("runner.no_such_module", "ghost"))
    with pytest.raises(ModuleNotFoundError):
        cli.load_command("ghost")
    result = CliRunner().invoke(cli.main, ["ghost"])
    assert result.exit_code != 0
    assert "No such command" not in result.output


def test_registered_attribute_must_be_a_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("runner.config.settings", "ConfigError"))
    with pytest.raises(RuntimeError, match="not a click command"):
        cli.load_command("ghost")
