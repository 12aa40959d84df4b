"""Issue 13 point 2: no output of any command contains a password given in a URL.

Every command runs as a real `runner` process against unreachable or malformed production addresses
whose URLs carry passwords; stdout and stderr must never show them, also with `--debug` tracebacks.
Configuration problems exit 2, an unexpected error one line and a hint to --debug.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.cli import COMMANDS
from runner.config import settings

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[2]
PG_PASSWORD = "S3CRET-pg-pass"
CH_PASSWORD = "S3CRET-ch-pass"
SECRETS = (PG_PASSWORD, CH_PASSWORD, "S3CRET")

# One invocation per command (and subcommand); the file `config.json` is written by the test.
INVOCATIONS = [
    ["apply", "--job-id", "j1"],
    ["apply", "--job-id", "j1", "--dry-run"],
    ["restore", "--job-id", "j1"],
    ["verify", "--job-id", "j1"],
    ["report"],
    ["schedule", "--config", "config.json"],
    ["schedule", "--config", "config.json", "--plan"],
    ["db", "migrate"],
    ["db", "init-local"],
    ["warehouse", "init"],
    ["warehouse", "sync-persons", "--timeout", "1"],
    ["demo", "seed", "--teams", "1", "--persons", "2", "--events", "2"],
    ["models", "run", "--select", "person_property_diff_summary"],
    ["outbox", "list"],
    ["outbox", "retry", "--all"],
]


def _env(tmp_path: Path, postgres: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            settings.ENV_PERSONS_DB: postgres,
            settings.ENV_KAFKA: "127.0.0.1:1",
            settings.ENV_CLICKHOUSE_URL: f"http://default:{CH_PASSWORD}@127.0.0.1:1/default",
            settings.ENV_DBT_TARGET: "prod",
            "CLICKHOUSE_HOST": "127.0.0.1",
            "CLICKHOUSE_PORT": "1",
            "CLICKHOUSE_PASSWORD": CH_PASSWORD,
            settings.ENV_STATE_DIR: str(tmp_path / "state"),
            settings.ENV_CHDB_PATH: str(tmp_path / "ch"),
            "PYTHONPATH": str(PROJECT),
        }
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "runner"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_every_command_is_covered() -> None:
    assert {args[0] for args in INVOCATIONS} == set(COMMANDS) - {"stack"}  # stack reads no settings


@pytest.mark.parametrize(
    "postgres",
    [f"postgresql://bob:{PG_PASSWORD}@127.0.0.1:1/posthog", f"postgresql://bob:{PG_PASSWORD}@[::1/db"],
    ids=["unreachable", "malformed"],
)
def test_no_command_prints_a_password(tmp_path: Path, postgres: str) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "team_ids": [1],
                "bug_window_start": "2026-01-06 20:01:00",
                "bug_window_end": "2026-01-07 14:52:00",
            }
        )
    )
    env = _env(tmp_path, postgres)
    for args in INVOCATIONS:
        for debug in ([], ["--debug"]):
            run = _run([*debug, *args], env, tmp_path)
            output = run.stdout + run.stderr
            leaked = [s for s in SECRETS if s in output]
            assert not leaked, f"runner {' '.join(debug + args)} printed {leaked}:\n{output}"
            assert run.returncode in ((0, 2) if "--plan" in args else (1, 2)), (
                f"runner {' '.join(args)}: exit {run.returncode}\n{output}"
            )
            if "malformed" in postgres or args[0] not in ("demo", "models"):
                # The stores are unreachable or the URL is malformed: the command cannot start.
                assert run.returncode == 2 or "Traceback" not in run.stderr, output
            if not debug:
                assert "Traceback" not in run.stderr, f"runner {' '.join(args)}:\n{run.stderr}"
            if "malformed" in postgres:
                assert run.returncode == 2, output
                assert "PERSONS_DB_WRITER_URL is not a valid Postgres URL" in run.stderr, output


def test_unexpected_error_is_one_line_with_a_debug_hint(tmp_path: Path) -> None:
    """A failure nobody anticipated: one line naming it, a hint to --debug, and the traceback only with
    --debug (passwords still masked)."""
    env = _env(tmp_path, f"postgresql://bob:{PG_PASSWORD}@127.0.0.1:1/posthog")
    env["RECON_TEST_CRASH"] = f"postgresql://bob:{PG_PASSWORD}@db/x"
    probe = (
        "import sys, click\n"
        "from runner import cli\n"
        "@click.command('boom')\n"
        "def boom():\n"
        "    raise RuntimeError('boom while talking to ' + __import__('os').environ['RECON_TEST_CRASH'])\n"
        "cli.COMMANDS['boom'] = ('__main__', 'boom')\n"
        "cli._NO_TARGET_LINE.add('boom')\n"
        "cli.main(sys.argv[1:])\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", probe, "boom"], env=env, capture_output=True, text=True, timeout=60
    )
    assert plain.returncode == 1
    lines = plain.stderr.strip().splitlines()
    assert lines[0] == "Error: unexpected RuntimeError: boom while talking to postgresql://bob:***@db/x"
    assert "--debug" in lines[1] and "RECON_DEBUG" in lines[1]
    assert "Traceback" not in plain.stderr
    debug = subprocess.run(
        [sys.executable, "-c", probe, "--debug", "boom"], env=env, capture_output=True, text=True, timeout=60
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert PG_PASSWORD not in debug.stderr + debug.stdout
