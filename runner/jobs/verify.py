"""`runner verify`'s job: did a job's repairs reach ClickHouse, and does the diff still see them?

It recomputes the diff with dbt (in this process, unless told not to), then checks every person the
job updated (its outbox rows), a page at a time: the reads are `runner.stores.verification`, the
classification (the classes are described in `runner.commands.verify`) is `runner.rules.verify`.

Every person that is not `ok` is kept with its detail in a spooled file (`Findings`), so memory stays
flat however many there are: the human output shows a sample of them, `--output json` all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import yaml  # type: ignore[import-untyped]

from runner.config import settings
from runner.config.settings import ConfigError
from runner.rules.verify import Verdict, artifact_suspects, classify, latest_versions
from runner.stores import verification
from runner.stores import warehouse as wh
from runner.stores.diffs import read_team_summaries

log = logging.getLogger("runner.verify")

# The order the human output shows samples in: what fails verify first.
SAMPLE_ORDER = ("differs", "not_ingested", "rule_artifact", "postgres_behind", "changed_since")


class RecomputeFailed(Exception):
    """dbt failed while recomputing the diff (not because of the vars: that is a ConfigError)."""


class Findings:
    """Every person not `ok`, as JSON lines in a spooled file (in memory up to 32 MB, then on disk)."""

    def __init__(self) -> None:
        self._file: Any = tempfile.SpooledTemporaryFile(
            max_size=32 * 1024 * 1024, mode="w+", encoding="utf-8"
        )
        self.count = 0

    def add(self, klass: str, detail: dict[str, Any]) -> None:
        self._file.write(json.dumps({"class": klass, **detail}) + "\n")
        self.count += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._file.flush()
        self._file.seek(0)
        for line in self._file:
            yield json.loads(line)
        self._file.seek(0, 2)  # further adds go to the end

    def sample(self, per_class: int) -> dict[str, list[dict[str, Any]]]:
        """Up to `per_class` persons of each class, in the order they were found."""
        samples: dict[str, list[dict[str, Any]]] = {}
        if per_class <= 0:
            return samples
        for record in self:
            bucket = samples.setdefault(record["class"], [])
            if len(bucket) < per_class:
                bucket.append(record)
        return samples

    def close(self) -> None:
        self._file.close()


@dataclass
class VerifyReport:
    job_id: str
    job_status: str
    recomputed: bool
    semantics: str  # of the diff the persons were checked against ("+"-joined when teams differ)
    verdict: Verdict
    findings: Findings = field(default_factory=Findings)

    @property
    def persons(self) -> int:
        return sum(self.verdict.counts.values())


def parse_vars(text: str | None) -> dict[str, Any] | None:
    """`--vars` as dbt takes them (YAML or JSON), a mapping; None when not given."""
    try:
        parsed = yaml.safe_load(text) if text else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--vars is not valid YAML/JSON: {exc}") from exc
    if parsed is not None and not isinstance(parsed, dict):
        raise ConfigError("--vars must be a mapping")
    return parsed


def recompute_diff(dbt_vars: dict[str, Any] | None, dbt_select: str | None) -> None:
    """Run dbt in this process; its log lines go to stderr (stdout is for the report)."""
    from runner.jobs.dbt import DbtFailed, run_dbt

    log.info("Recomputing the diff with dbt (vars: %s)", dbt_vars or {})
    try:
        with contextlib.redirect_stdout(sys.stderr):
            run_dbt("run", dbt_vars, ["--select", dbt_select] if dbt_select else None)
    except DbtFailed as exc:
        if "Compilation Error" in exc.detail:  # the models' var checks (macros/recon_vars.sql)
            raise ConfigError(f"--vars refused by the models: {exc.detail.strip()}") from None
        raise RecomputeFailed(f"recomputing the diff failed: {exc}") from None


def check_job(
    conn: psycopg.Connection,
    client: Any,
    job_id: str,
    source_db: str,
    schema: str,
    replay_teams: frozenset[int] = frozenset(),
    findings: Findings | None = None,
) -> Verdict:
    """Classify every person the job updated. `replay_teams`: teams whose diff was built with
    `semantics: replay` (no rule artifacts there); `findings` receives every person not `ok`."""
    verdict = Verdict()
    for page in verification.job_pages(conn, job_id):
        latest = latest_versions(page)
        teams = [t for t, _ in latest]
        ids = [p for _, p in latest]
        ch = verification.clickhouse_state(client, source_db, teams, ids)
        diff = verification.diff_entries(client, schema, teams, ids)
        pg = verification.postgres_versions(conn, teams, ids)
        touched = verification.job_operations(conn, job_id, artifact_suspects(latest, ch, diff, pg))
        for key, job_version in latest.items():
            klass, detail = classify(
                key, job_version, ch.get(key), diff.get(key), pg.get(key), touched.get(key), replay_teams
            )
            verdict.add(klass, detail)
            if findings is not None and klass != "ok":
                findings.add(klass, detail)
    return verdict


def verify_job(job_id: str, dbt_vars: str | None, dbt_select: str | None, recompute: bool) -> VerifyReport:
    """Recompute the diff (unless `recompute` is false) and check the job's persons against it, with
    Postgres and ClickHouse from the settings. The caller closes the report's findings."""
    cfg = settings.Settings.load()
    pg_url = settings.persons_db_url()
    assert pg_url is not None
    parsed_vars = parse_vars(dbt_vars)
    try:
        conn = psycopg.connect(pg_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to Postgres ({settings.ENV_PERSONS_DB}): {exc}") from exc
    with conn:
        job = verification.job_of(conn, job_id)
        if job is None:
            raise ConfigError(f"no job {job_id!r} in the run ledger (a dry run records nothing)")
        if recompute:
            recompute_diff(parsed_vars, dbt_select)
        client = wh.client(cfg.clickhouse_url)
        summaries = read_team_summaries(client, cfg.target_schema)
        replay_teams = frozenset(t.team_id for t in summaries if t.semantics == "replay")
        semantics = "+".join(sorted({t.semantics for t in summaries})) or "original"
        findings = Findings()
        try:
            verdict = check_job(
                conn, client, job_id, cfg.source_database, cfg.target_schema, replay_teams, findings
            )
        except BaseException:
            findings.close()
            raise
    return VerifyReport(job_id, job[1], recompute, semantics, verdict, findings)
