"""`runner verify --job-id ID`: did the job's repairs reach ClickHouse, and does the diff still see them?

It recomputes the diff with dbt (in this process; `--no-recompute` skips that and reads the diff table
as it is), then checks every person the job updated (its outbox rows):

- `ok`: ClickHouse holds the job's version (or a later one) and the diff no longer lists the person.
- `changed_since`: still in the diff, but Postgres moved past the job's version: someone else changed
  the person since (expected, not an error).
- `postgres_behind`: ClickHouse already held a higher version than Postgres, so the job's version
  never replaces it there (gotcha 19; expected, not an error).
- `rule_artifact`: still in the diff at the job's version, but only for reasons the diff rules
  themselves produce (expected, not an error): a SET whose value equals the stored one as JSON, a SET on
  a key the job filled with SET_ONCE, or a SET_ONCE/UNSET of a key the job itself touched. The
  original's per-key rules, kept by default, judge each kind against the current state alone (gotchas
  2–4): they add a key a later unset removes, remove one a later set re-added, or fill an absent key
  with the SET_ONCE value and only see the later SET once the key exists, so a recomputed diff can list
  such keys again (and alternate between runs).
  Under `semantics: replay` there is no such class: a replayed diff is a fixed point (once applied and
  ingested, the next build lists the person no more), so anything left is `differs`.
- `not_ingested`: ClickHouse has not got the job's version yet (run `runner warehouse sync-persons`
  locally; in production, wait for ingestion).
- `differs`: still in the diff at the job's version for any other reason.

Exit codes: 0 nothing unexpected; 1 persons `not_ingested` or `differs`; 2 bad usage or configuration.

The classification is pure (`runner.rules.verify`); this module reads the job's outbox rows, ClickHouse
and Postgres, and reports.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any
from uuid import UUID

import click
import psycopg
import yaml  # type: ignore[import-untyped]

from runner.commands import options
from runner.config import settings
from runner.config.settings import ConfigError
from runner.rules.verify import CLASSES, Verdict, artifact_suspects, classify, latest_versions
from runner.stores import warehouse as wh
from runner.stores.diffs import DIFF_TABLE, read_team_summaries
from runner.stores.warehouse import ident

log = logging.getLogger("runner.commands.verify")

PAGE = 10_000


def _job_pages(conn: psycopg.Connection, job_id: str) -> Any:
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, team_id, person_uuid, version FROM recon_outbox WHERE job_id = %s AND id > %s "
            "ORDER BY id LIMIT %s",
            (job_id, last, PAGE),
        ).fetchall()
        if rows:
            yield rows
            last = rows[-1][0]
        if len(rows) < PAGE:
            return


_PAIRS = """(team_id, {id_column}) IN (
            SELECT tupleElement(pair, 1), tupleElement(pair, 2)
            FROM (SELECT arrayJoin(arrayZip({{teams:Array(Int64)}}, {{ids:Array(UUID)}})) AS pair))"""


def _ch_state(
    client: Any, source_db: str, teams: list[int], ids: list[UUID]
) -> dict[tuple[int, UUID], tuple]:
    """R2.2 per person: (version, is_deleted, properties) of the highest version."""
    rows = client.query(
        f"""
        SELECT team_id, id, max(version), argMax(is_deleted, version), argMax(properties, version)
        FROM {ident(source_db)}.person
        WHERE {_PAIRS.format(id_column="id")}
        GROUP BY team_id, id
        """,
        parameters={"teams": teams, "ids": ids},
    ).result_rows
    return {(int(t), UUID(str(i))): (int(v), int(d), p) for t, i, v, d, p in rows}


def _in_diff(client: Any, schema: str, teams: list[int], ids: list[UUID]) -> dict[tuple[int, UUID], dict]:
    rows = client.query(
        f"""
        SELECT team_id, person_id, baseline_version, set_keys, set_values, set_once_keys, unset_keys
        FROM {ident(schema)}.{ident(DIFF_TABLE)}
        WHERE {_PAIRS.format(id_column="person_id")}
        """,
        parameters={"teams": teams, "ids": ids},
    ).result_rows
    return {
        (int(t), UUID(str(i))): {
            "baseline_version": int(b),
            "set": dict(zip(s, v, strict=True)),
            "set_once": list(o),
            "unset": list(u),
        }
        for t, i, b, s, v, o, u in rows
    }


def _pg_versions(conn: psycopg.Connection, teams: list[int], ids: list[UUID]) -> dict[tuple[int, UUID], int]:
    rows = conn.execute(
        "SELECT p.team_id, p.uuid, coalesce(p.version, 0) FROM posthog_person p "
        "JOIN unnest(%s::int[], %s::uuid[]) AS w(team_id, uuid) ON p.team_id = w.team_id AND p.uuid = w.uuid",
        (teams, ids),
    ).fetchall()
    return {(int(t), u): int(v) for t, u, v in rows}


def _job_operations(
    conn: psycopg.Connection, job_id: str, keys: list[tuple[int, UUID]]
) -> dict[tuple[int, UUID], dict[str, set[str]]]:
    """Keys the job's diff touched per person, with their operations (its backup rows' pending_operations)."""
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT b.team_id, b.uuid, b.pending_operations FROM posthog_person_reconciliation_backup b "
        "JOIN unnest(%s::int[], %s::uuid[]) AS w(team_id, uuid) ON b.team_id = w.team_id AND b.uuid = w.uuid "
        "WHERE b.job_id = %s",
        ([t for t, _ in keys], [u for _, u in keys], job_id),
    ).fetchall()
    by_person: dict[tuple[int, UUID], dict[str, set[str]]] = {}
    for t, u, ops in rows:
        operations = by_person.setdefault((int(t), u), {})
        for op in ops:
            if isinstance(op, dict):
                operations.setdefault(op["key"], set()).add(op.get("operation", ""))
    return by_person


def check_job(
    conn: psycopg.Connection,
    client: Any,
    job_id: str,
    source_db: str,
    schema: str,
    replay_teams: frozenset[int] = frozenset(),
) -> Verdict:
    """`replay_teams`: teams whose diff was built with `semantics: replay` (no rule artifacts there)."""
    verdict = Verdict()
    for page in _job_pages(conn, job_id):
        latest = latest_versions(page)
        teams = [t for t, _ in latest]
        ids = [p for _, p in latest]
        ch = _ch_state(client, source_db, teams, ids)
        diff = _in_diff(client, schema, teams, ids)
        pg = _pg_versions(conn, teams, ids)
        touched = _job_operations(conn, job_id, artifact_suspects(latest, ch, diff, pg))
        for key, job_version in latest.items():
            klass, detail = classify(
                key, job_version, ch.get(key), diff.get(key), pg.get(key), touched.get(key), replay_teams
            )
            verdict.add(klass, detail)
    return verdict


@click.command("verify")
@options.job_id_option("The apply job to check.", required=True)
@click.option(
    "--vars",
    "dbt_vars",
    default=None,
    envvar="RECON_DBT_VARS",
    show_envvar=True,
    help="dbt vars (YAML/JSON) for recomputing the diff, as given to `dbt run --vars`.",
)
@click.option(
    "--select",
    "dbt_select",
    default=None,
    envvar="RECON_DBT_SELECT",
    show_envvar=True,
    help="dbt selection to recompute (default: the whole project).",
)
@click.option(
    "--recompute/--no-recompute",
    default=True,
    show_default=True,
    envvar="RECON_VERIFY_RECOMPUTE",
    show_envvar=True,
    help="Run dbt first (in this process); --no-recompute checks against the diff table as it is.",
)
@options.output_option("one JSON object on stdout; logs stay on stderr.")
def verify(job_id: str, dbt_vars: str | None, dbt_select: str | None, recompute: bool, output: str) -> None:
    """Check that the job's updates reached ClickHouse and that the recomputed diff no longer lists them.

    Exit codes: 0 nothing unexpected; 1 persons not ingested or still differing; 2 bad usage.
    """
    cfg = settings.Settings.load()
    pg_url = settings.persons_db_url()
    assert pg_url is not None
    try:
        parsed_vars = yaml.safe_load(dbt_vars) if dbt_vars else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--vars is not valid YAML/JSON: {exc}") from exc
    if parsed_vars is not None and not isinstance(parsed_vars, dict):
        raise ConfigError("--vars must be a mapping")
    try:
        conn = psycopg.connect(pg_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to Postgres ({settings.ENV_PERSONS_DB}): {exc}") from exc
    with conn:
        row = conn.execute("SELECT kind, status FROM recon_run WHERE job_id = %s", (job_id,)).fetchone()
        if row is None:
            raise ConfigError(f"no job {job_id!r} in the run ledger (a dry run records nothing)")
        if recompute:
            from runner.jobs.dbt import DbtFailed, run_dbt

            log.info("Recomputing the diff with dbt (vars: %s)", parsed_vars or {})
            # dbt's log lines go to stderr: stdout is for the report (one JSON object with --output json)
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    run_dbt("run", parsed_vars, ["--select", dbt_select] if dbt_select else None)
            except DbtFailed as exc:
                if "Compilation Error" in exc.detail:  # the models' var checks (macros/recon_vars.sql)
                    raise ConfigError(f"--vars refused by the models: {exc.detail.strip()}") from None
                raise click.ClickException(f"recomputing the diff failed: {exc}") from None
        client = wh.client(cfg.clickhouse_url)
        summaries = read_team_summaries(client, cfg.target_schema)
        replay_teams = frozenset(t.team_id for t in summaries if t.semantics == "replay")
        semantics = "+".join(sorted({t.semantics for t in summaries})) or "original"
        verdict = check_job(conn, client, job_id, cfg.source_database, cfg.target_schema, replay_teams)
    report = {
        "type": "verify",
        "job_id": job_id,
        "job_status": row[1],
        "recomputed": recompute,
        "semantics": semantics,
        **{klass: verdict.counts.get(klass, 0) for klass in CLASSES},
        "samples": verdict.samples,
    }
    if output == "json":
        click.echo(json.dumps(report))
    else:
        click.echo(
            f"job {job_id} ({row[1]}): {sum(verdict.counts.values())} persons updated by the job, "
            f"diff recomputed with semantics {semantics}"
            if recompute
            else f"job {job_id} ({row[1]}): {sum(verdict.counts.values())} persons updated by the job, "
            f"diff table semantics {semantics}"
        )
        for klass in CLASSES:
            click.echo(f"  {klass:<14}{verdict.counts.get(klass, 0):>10}")
        for klass in ("differs", "not_ingested", "rule_artifact", "postgres_behind", "changed_since"):
            for detail in verdict.samples.get(klass, []):
                click.echo(f"  {klass}: {json.dumps(detail)}")
        if verdict.counts.get("not_ingested"):
            click.echo(
                "hint: ClickHouse has not ingested the job's messages yet "
                "(locally: runner warehouse sync-persons)"
            )
        click.echo("verify: " + ("FAILED" if verdict.failed else "ok"))
    sys.exit(1 if verdict.failed else 0)
