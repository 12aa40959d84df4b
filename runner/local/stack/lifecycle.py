"""The stack as a whole: `up` (idempotent; a stale or partial stack is cleaned up first), `down`, `status`,
and the `export` lines for a shell.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from runner.config import settings
from runner.local.stack import postgres as pg
from runner.local.stack import stack_file, tansu
from runner.local.stack.processes import pid_alive

log = logging.getLogger("runner.local.stack")  # the name it had before the split: same log lines


def running(info: dict[str, Any]) -> tuple[bool, bool]:
    """Whether (Postgres, Kafka) of a stack.json content run."""
    return pg.running(info.get("postgres") or {}), tansu.running(info.get("kafka") or {})


def ensure_up(state: Path) -> tuple[dict[str, Any], bool]:
    """The running stack of `state`, starting it first if needed: (content of stack.json, started now)."""
    with stack_file.locked(state):
        current = stack_file.read(state)
        if current and all(running(current)):
            return current, False
        bindir = pg.find_pg_bindir()  # fail before touching anything when Postgres is missing
        if current:
            log.info("stack in %s is stale or partial: cleaning it up before starting", state)
        teardown(state, current)  # also stops leftovers of a crashed `up` that wrote no stack.json
        started = time.monotonic()
        postgres: dict[str, Any] = {}
        try:
            postgres = pg.start(bindir, state)
            from runner.local import sources
            from runner.stores import pg_schema

            sources.init_posthog_person(postgres["url"])
            pg_schema.migrate(postgres["url"])
            kafka = tansu.start(state, settings.person_topic())
        except BaseException:
            if postgres:
                pg.stop(bindir, Path(postgres["data_dir"]), postgres["port"])
            raise
        info = {
            "postgres": postgres,
            "kafka": kafka,
            "state_dir": str(state),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        stack_file.write(state, info)
        log.info("local stack started in %.1fs", time.monotonic() - started)
        return info, True


def up(state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Start the local stack, or return the running one unchanged. Returns the content of stack.json."""
    return ensure_up(stack_file.state_dir(state_dir))[0]


def teardown(state: Path, info: dict[str, Any], purge: bool = False) -> dict[str, Any]:
    """Stop what `info` records (and leftovers found in `state`), remove stack.json; which parts ran."""
    stopped: dict[str, Any] = {"postgres": False, "kafka": False}
    kafka = info.get("kafka") or {}
    pid_file = tansu.directory(state) / "tansu.pid"
    tansu_pid = kafka.get("pid")
    if tansu_pid is None and pid_file.exists():
        with contextlib.suppress(ValueError, OSError):
            tansu_pid = int(pid_file.read_text().strip())
    if tansu_pid and pid_alive(tansu_pid):
        stopped["kafka"] = True
    tansu.stop(tansu_pid, kafka.get("port"))
    pid_file.unlink(missing_ok=True)

    postgres = info.get("postgres") or {}
    data_dir = Path(postgres["data_dir"]) if postgres.get("data_dir") else pg.cluster_root(state) / "data"
    bindir = Path(postgres["bin_dir"]) if postgres.get("bin_dir") else None
    if pid_alive(pg.postmaster_pid(data_dir)):
        stopped["postgres"] = True
    pg.stop(bindir, data_dir, postgres.get("port"))

    stack_file.path(state).unlink(missing_ok=True)
    if purge:
        for directory in {
            data_dir.parent,
            pg.cluster_root(state),
            state / "postgres",
            tansu.directory(state),
        }:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(directory)
    return stopped


def down(state_dir: str | os.PathLike[str] | None = None, purge: bool = False) -> dict[str, Any]:
    """Stop the local stack (no process and no port left) and remove stack.json.

    With `purge`, also delete the Postgres cluster and the broker's log. Returns which parts were running.
    """
    state = stack_file.state_dir(state_dir)
    with stack_file.locked(state):
        return teardown(state, stack_file.read(state), purge=purge)


def status(state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Whether each part of the local stack runs, with its address."""
    state = stack_file.state_dir(state_dir)
    info = stack_file.read(state)
    pg_ok, kafka_ok = running(info) if info else (False, False)
    postgres = info.get("postgres") or {}
    kafka = info.get("kafka") or {}
    return {
        "state_file": str(stack_file.path(state)),
        "running": pg_ok and kafka_ok,
        "postgres": {
            "running": pg_ok,
            "url": postgres.get("url"),
            "port": postgres.get("port"),
            "pid": postgres.get("pid"),
            "data_dir": postgres.get("data_dir"),
        },
        "kafka": {
            "running": kafka_ok,
            "bootstrap_servers": kafka.get("bootstrap_servers"),
            "port": kafka.get("port"),
            "pid": kafka.get("pid"),
            "topic": kafka.get("topic"),
        },
    }


def env_lines(info: dict[str, Any]) -> list[str]:
    """Shell `export` lines that point the production settings at the stack."""
    return [
        f"export {settings.ENV_PERSONS_DB}={shlex.quote(info['postgres']['url'])}",
        f"export {settings.ENV_KAFKA}={shlex.quote(info['kafka']['bootstrap_servers'])}",
        # All three production variables together (runner.config.settings refuses a partial set).
        f"export {settings.ENV_CLICKHOUSE_URL}={shlex.quote(f'chdb://{settings.chdb_path()}')}",
    ]
