"""Issue 13 point 6: `--max-rate` (and RECON_MAX_RATE) holds apply and restore to N persons per second
across batches, and the progress line shows the rate, the ETA and the limit.

Only lower bounds on time are asserted (the limit makes a run at least this slow); how fast a run goes
otherwise is the benchmarks' business.
"""

from __future__ import annotations

import time

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

from runner.cli import main
from runner.config import faults

pytestmark = pytest.mark.integration

PERSONS = 60


def seed(env) -> None:
    uuids = [new_uuid(5000 + i) for i in range(PERSONS)]
    insert_ch_persons(env["ch"], [(1, u, {"plan": "free"}, 2) for u in uuids])
    for u in uuids:
        insert_pg_person(env["pg"], 1, u, {"plan": "free"}, 2)
    insert_diffs(env["ch"], [Diff(1, u, 2, set={"plan": ('"paid"', TS)}) for u in uuids])
    insert_summary(env["ch"], {1: PERSONS})


def timed(*args: str):
    faults.reset()
    started = time.monotonic()
    result = CliRunner().invoke(main, list(args))
    return result, time.monotonic() - started


def test_apply_and_restore_keep_to_the_limit_across_batches(env, pg_rows, monkeypatch):
    seed(env)
    # 60 persons in batches of 10 at 100/s: each batch after the first waits for the one before.
    run, seconds = timed("apply", "--job-id", "paced", "--batch-size", "10", "--max-rate", "100")
    assert run.exit_code == 0, run.output
    assert seconds >= 0.5 - 0.01
    assert pg_rows("SELECT count(*) FROM posthog_person WHERE version = 3") == [(PERSONS,)]
    progress = [line for line in run.stderr.splitlines() if "runner.progress" in line]
    assert progress, run.stderr
    assert "job paced: " in progress[0] and "/60 persons (" in progress[0]
    assert "/s, ETA " in progress[0] and progress[0].endswith("(limited to 100/s)")

    monkeypatch.setenv("RECON_MAX_RATE", "100")  # the environment variable works too
    run, seconds = timed(
        "restore", "--job-id", "paced", "--restore-job-id", "undo-paced", "--batch-size", "10"
    )
    assert run.exit_code == 0, run.output
    assert seconds >= 0.5 - 0.01
    assert any(
        "restore undo-paced: " in line and "(limited to 100/s)" in line for line in run.stderr.splitlines()
    )
    assert pg_rows("SELECT count(*) FROM posthog_person WHERE properties->>'plan' = 'free'") == [(PERSONS,)]


@pytest.mark.parametrize("bad", ["0", "-5", "fast"])
def test_bad_max_rate_exits_2_and_writes_nothing(env, pg_rows, bad):
    seed(env)
    run, _ = timed("apply", "--job-id", "paced-bad", "--max-rate", bad)
    assert run.exit_code == 2 and "--max-rate" in run.stderr, run.output
    assert pg_rows("SELECT count(*) FROM recon_run") == [(0,)]
    assert pg_rows("SELECT count(*) FROM posthog_person WHERE version > 2") == [(0,)]
