"""`runner models run`: the dbt project in this process (`runner.jobs.dbt`)."""

from __future__ import annotations

import click

from runner.jobs.dbt import dbt_args


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
