"""Run the dbt project in-process.

chDB allows one process per engine path, so code that already holds the embedded engine (tests, the
scheduler, `runner models run`) must run dbt inside the same process instead of spawning `dbt`.
Against a ClickHouse server this is equivalent to `dbt run --project-dir . --profiles-dir profiles`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from runner import settings


class DbtFailed(Exception):
    def __init__(self, command: str, detail: str):
        super().__init__(f"dbt {command} failed: {detail}")
        self.command = command
        self.detail = detail


def dbt_args(
    command: str, dbt_vars: dict[str, Any] | None = None, extra: list[str] | None = None
) -> list[str]:
    project = settings.project_dir()
    args = [command, "--project-dir", str(project), "--profiles-dir", str(project / "profiles")]
    if dbt_vars:
        args += ["--vars", json.dumps(dbt_vars)]
    return args + list(extra or [])


def run_dbt(command: str, dbt_vars: dict[str, Any] | None = None, extra: list[str] | None = None) -> Any:
    """Invoke dbt in this process; raises DbtFailed with the first error message on failure."""
    from dbt.cli.main import dbtRunner

    os.environ.setdefault(settings.ENV_CHDB_PATH, str(settings.chdb_path()))
    Path(os.environ[settings.ENV_CHDB_PATH]).mkdir(parents=True, exist_ok=True)
    result = dbtRunner().invoke(dbt_args(command, dbt_vars, extra))
    if not result.success:
        detail = str(result.exception) if result.exception else ""
        if not detail and result.result is not None:
            errors = [
                f"{getattr(getattr(r, 'node', None), 'name', 'dbt')}: {r.message}"
                for r in getattr(result.result, "results", [])
                if str(getattr(r, "status", "")) in ("error", "fail")
            ]
            detail = "; ".join(errors)
        raise DbtFailed(command, detail or "see dbt log")
    return result.result


@click.group("models")
def models() -> None:
    """Run the dbt project in-process (same as `dbt ... --project-dir . --profiles-dir profiles`)."""


@models.command("run", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--vars", "vars_json", default=None, help="dbt vars as YAML/JSON, as for `dbt run --vars`.")
@click.pass_context
def run_cmd(ctx: click.Context, vars_json: str | None) -> None:
    """`dbt run` in this process; extra arguments are passed to dbt (e.g. --select, --target)."""
    from dbt.cli.main import dbtRunner

    args = dbt_args("run", None, list(ctx.args))
    if vars_json:
        args += ["--vars", vars_json]
    result = dbtRunner().invoke(args)
    raise SystemExit(0 if result.success else 1)
