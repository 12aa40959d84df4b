"""Issue 13 point 1: production and the local stack never mix.

With the local stack running (its stack.json present), a command given only some of the production
addresses exits 2 naming the missing ones, before writing anything; given all three it uses exactly
those and says so on stderr, passwords masked.
"""

from __future__ import annotations

import pytest
from apply_support import (
    TS,
    Diff,
    insert_ch_persons,
    insert_diffs,
    insert_pg_person,
    insert_summary,
    new_uuid,
)
from click.testing import CliRunner
from targets_util import use_targets

from runner.cli import main
from runner.config import settings

pytestmark = pytest.mark.integration

WRITTEN = (
    "SELECT (SELECT count(*) FROM posthog_person_reconciliation_backup), "
    "(SELECT count(*) FROM recon_outbox), (SELECT count(*) FROM recon_run), "
    "(SELECT count(*) FROM posthog_person WHERE version > 2)"
)


def seed_one_team(env) -> None:
    uuids = [new_uuid(700 + i) for i in range(2)]
    insert_ch_persons(env["ch"], [(1, u, {"plan": "free"}, 2) for u in uuids])
    for u in uuids:
        insert_pg_person(env["pg"], 1, u, {"plan": "free"}, 2)
    insert_diffs(env["ch"], [Diff(1, u, 2, set={"plan": ('"paid"', TS)}) for u in uuids])
    insert_summary(env["ch"], {1: 2})


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    "given",
    [
        [settings.ENV_PERSONS_DB],
        [settings.ENV_KAFKA],
        [settings.ENV_CLICKHOUSE_URL],
        [settings.ENV_PERSONS_DB, settings.ENV_KAFKA],
    ],
)
def test_partial_production_settings_exit_2_and_write_nothing(
    env, pg_rows, pg_url, kafka_bootstrap, stack, monkeypatch, given
):
    seed_one_team(env)
    values = {
        settings.ENV_PERSONS_DB: pg_url,
        settings.ENV_KAFKA: kafka_bootstrap,
        settings.ENV_CLICKHOUSE_URL: "chdb://" + str(settings.chdb_path()),
    }
    for name in given:
        monkeypatch.setenv(name, values[name])
    missing = [name for name in values if name not in given]
    for args in (["apply", "--job-id", "mixed"], ["restore", "--job-id", "mixed"], ["report"]):
        run = invoke(*args)
        assert run.exit_code == 2, (args, run.output)
        assert "production settings are incomplete" in run.stderr
        assert all(name in run.stderr for name in missing), run.stderr
        assert run.stdout == ""
    assert pg_rows(WRITTEN) == [(0, 0, 0, 0)]


def test_all_three_are_used_and_shown_masked(env, pg_rows, pg_url, kafka_bootstrap, monkeypatch):
    seed_one_team(env)
    # The same servers, but through a URL with a password (trust auth ignores it).
    with_password = pg_url.replace("postgresql://postgres@", "postgresql://postgres:Pa55-word@")
    assert with_password != pg_url
    use_targets(monkeypatch, postgres=with_password, kafka=kafka_bootstrap)
    run = invoke("apply", "--job-id", "explicit")
    assert run.exit_code == 0, run.stderr
    first = run.stderr.splitlines()[0]
    assert first.startswith("targets (environment): postgres postgresql://postgres:***@")
    assert f"kafka {kafka_bootstrap}" in first and "clickhouse chdb://" in first
    assert "Pa55-word" not in run.output
    assert pg_rows(WRITTEN)[0][0] == 2


def test_local_stack_is_named_when_nothing_is_set(env, pg_url):
    seed_one_team(env)
    run = invoke("apply", "--job-id", "local", "--dry-run")
    assert run.exit_code == 0, run.stderr
    assert run.stderr.splitlines()[0].startswith(f"targets (local stack): postgres {pg_url}; kafka ")
