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

from runner.config import settings


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
