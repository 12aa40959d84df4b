"""Issue 13 point 4: one process per job id for `apply` and `restore`, and job ids matched whole.

A second process on a job id someone holds exits 2 naming the holder (its command, pid and host from
pg_stat_activity) and writes nothing; a real `runner apply` holds the lock while it runs; the lock goes
away with its process.
"""

from __future__ import annotations

import subprocess
import sys
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
from conftest import PROJECT
from test_apply_crash import APPLY, seed

from runner.config import faults
from runner.config.settings import ConfigError
from runner.stores import job_lock

pytestmark = pytest.mark.integration

WRITTEN = (
    "SELECT (SELECT count(*) FROM posthog_person_reconciliation_backup), "
    "(SELECT count(*) FROM recon_outbox), (SELECT count(*) FROM recon_run), "
    "(SELECT count(*) FROM posthog_person WHERE version > 2)"
)

_HOLD = """
import sys
from runner.stores import job_lock
job_lock.acquire(sys.argv[1], sys.argv[2], sys.argv[3])
print("held", flush=True)
sys.stdin.read()
"""


def seed_one_team(env) -> None:
    uuids = [new_uuid(900 + i) for i in range(3)]
    insert_ch_persons(env["ch"], [(1, u, {"plan": "free"}, 2) for u in uuids])
    for u in uuids:
        insert_pg_person(env["pg"], 1, u, {"plan": "free"}, 2)
    insert_diffs(env["ch"], [Diff(1, u, 2, set={"plan": ('"paid"', TS)}) for u in uuids])
    insert_summary(env["ch"], {1: 3})


def hold(pg_url: str, command: str, job_id: str) -> subprocess.Popen[str]:
    """Another process holding the job's lock, until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, pg_url, command, job_id],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=PROJECT,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def test_second_apply_of_a_held_job_exits_2_naming_the_holder(env, run_apply, pg_rows, pg_url):
    seed_one_team(env)
    holder = hold(pg_url, "apply", "job-locked")
    try:
        run = run_apply("--job-id", "job-locked")
        assert run.exit_code == 2, run.stderr
        assert "job job-locked is already being written by another process" in run.stderr
        assert f"recon apply job-locked pid={holder.pid}@" in run.stderr
        assert "Postgres backend pid" in run.stderr
        assert pg_rows(WRITTEN) == [(0, 0, 0, 0)]
        # Another job id and a dry run of this one are not blocked.
        assert run_apply("--job-id", "job-locked", "--dry-run").exit_code == 0
    finally:
        release(holder)
    # The lock died with its process: the job runs now.
    done = run_apply("--job-id", "job-locked")
    assert done.exit_code == 0, done.stderr
    assert pg_rows(WRITTEN)[0][0] == 3


def test_restore_is_refused_while_its_job_or_its_own_id_is_held(env, run_apply, pg_rows, pg_url):
    seed_one_team(env)
    assert run_apply("--job-id", "job-r").exit_code == 0
    before = pg_rows(WRITTEN)
    for command, job_id in (("apply", "job-r"), ("restore", "undo-job-r")):
        holder = hold(pg_url, command, job_id)
        try:
            faults.reset()
            from click.testing import CliRunner

            from runner.cli import main

            run = CliRunner().invoke(main, ["restore", "--job-id", "job-r", "--restore-job-id", "undo-job-r"])
            assert run.exit_code == 2, run.output
            assert f"job {job_id} is already being written by another process" in run.stderr
            assert f"recon {command} {job_id} pid={holder.pid}@" in run.stderr
            assert pg_rows(WRITTEN) == before
        finally:
            release(holder)


def test_a_running_apply_holds_its_job_lock(tmp_path, subprocess_env, pg_url):
    """The real command takes the lock: paused after its first commit, the job id is held by it."""
    seed(tmp_path, subprocess_env, pg_url)
    marker = tmp_path / "paused"
    env = {**subprocess_env, faults.ENV_FAULT: "after_commit:1:pause", faults.ENV_FAULT_FILE: str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from runner.cli import main; main()", *APPLY],
        env=env,
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(ConfigError, match=rf"recon apply job-crash pid={proc.pid}@"):
            job_lock.acquire(pg_url, "apply", "job-crash")
        marker.unlink()
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    job_lock.acquire(pg_url, "apply", "job-crash").release()  # released at exit


@pytest.mark.parametrize("bad", ["demo\n", "demo\r", " demo", "de mo", "-demo", "d" * 201])
def test_job_ids_are_matched_whole(env, run_apply, pg_rows, bad):
    run = run_apply("--job-id", bad)
    assert run.exit_code == 2 and "Invalid value for --job-id" in run.stderr
    assert pg_rows(WRITTEN) == [(0, 0, 0, 0)]
