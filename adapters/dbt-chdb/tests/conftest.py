"""Fixtures for the chdb adapter's tests: a throwaway dbt project run in-process.

chDB opens one engine path per process. When these tests run in the same pytest process as recon's
own suite, they use the engine path that suite chose (`RECON_TEST_SESSION_CHDB_PATH`, set by its
`recon_env` fixture); run alone, they choose one and publish it the same way. Each test builds
its models in a schema (ClickHouse database) of its own and drops it afterwards.
"""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

SESSION_CHDB_ENV = "RECON_TEST_SESSION_CHDB_PATH"


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = os.environ.get(SESSION_CHDB_ENV)
    if not path:
        path = str(tmp_path_factory.mktemp("dbt-chdb") / "clickhouse")
        os.environ[SESSION_CHDB_ENV] = path
    os.environ["RECON_CHDB_PATH"] = path
    Path(path).mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def ch(chdb_path: str) -> Any:
    """A clickhouse-connect client on the same embedded engine dbt uses."""
    return clickhouse_connect.get_client(interface="chdb", path=chdb_path)


class DbtProject:
    """A minimal dbt project on disk whose profile targets the embedded engine."""

    def __init__(self, root: Path, schema: str, chdb_path: str):
        self.root = root
        self.schema = schema
        (root / "models").mkdir(parents=True)
        (root / "dbt_project.yml").write_text(
            textwrap.dedent(
                """\
                name: chdb_adapter_test
                version: "1.0"
                config-version: 2
                profile: chdb_adapter_test
                model-paths: ["models"]
                flags:
                  send_anonymous_usage_stats: false
                """
            )
        )
        (root / "profiles.yml").write_text(
            textwrap.dedent(
                f"""\
                chdb_adapter_test:
                  target: local
                  outputs:
                    local:
                      type: chdb
                      path: "{{{{ env_var('RECON_CHDB_PATH') }}}}"
                      schema: {schema}
                      threads: 1
                      use_lw_deletes: true
                      custom_settings:
                        session_timezone: UTC
                """
            )
        )
        self.chdb_path = chdb_path

    def model(self, name: str, sql: str) -> None:
        (self.root / "models" / name).write_text(textwrap.dedent(sql))

    def invoke(self, *args: str, env: dict[str, str] | None = None) -> Any:
        """Run dbt in this process. Parameters go through `env` (read by `env_var()` in the models)
        rather than `--vars`: changed vars force a full re-parse (2-3 s), changed env vars do not."""
        from dbt.cli.main import dbtRunner

        argv = [*args, "--project-dir", str(self.root), "--profiles-dir", str(self.root)]
        saved = {name: os.environ.get(name) for name in env or {}}
        os.environ.update(env or {})
        try:
            result = dbtRunner().invoke(argv)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        if not result.success:
            failures = [
                f"{r.node.name}: {r.message}"
                for r in getattr(result.result, "results", None) or []
                if str(getattr(r, "status", "")) in ("error", "fail")
            ]
            raise AssertionError(f"dbt {' '.join(args)} failed: {result.exception or failures}")
        return result


@pytest.fixture
def dbt_project(tmp_path: Path, chdb_path: str, ch: Any) -> Iterator[DbtProject]:
    schema = f"dbt_chdb_test_{uuid.uuid4().hex[:8]}"
    project = DbtProject(tmp_path / "project", schema, chdb_path)
    try:
        yield project
    finally:
        ch.command(f"DROP DATABASE IF EXISTS `{schema}`")
