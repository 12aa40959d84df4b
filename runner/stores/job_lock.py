"""One process per job id: a Postgres advisory lock held by `apply` and `restore` while they write.

Two processes writing under one job id would interleave backup, outbox and ledger rows (and against a
ClickHouse server overwrite each other's ledger rows), so the second one stops before writing anything
(exit 2) and names the holder. The lock is a session lock on a connection of its own, whose
`application_name` carries the holder's command, pid and host so the refusal can name them; it is
released when the command ends, or by Postgres when the process dies.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import click
import psycopg

from runner.config.settings import ConfigError

log = logging.getLogger("runner.job_lock")  # its name before the move: same log lines

_NAMESPACE = "recon_job:"
_HOLDER_SQL = """
SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid::bigint = ((%(key)s >> 32) & 4294967295) AND l.objid::bigint = (%(key)s & 4294967295)
"""


class JobLock:
    """A held lock on one or more job ids; `release()` is idempotent."""

    def __init__(self, conn: psycopg.Connection[Any], job_ids: tuple[str, ...]):
        self.conn = conn
        self.job_ids = job_ids

    def release(self) -> None:
        if self in _HELD:
            _HELD.remove(self)
        if not self.conn.closed:
            self.conn.close()  # ends the session, and with it its advisory locks


# Held locks stay referenced here until released: a collected connection would drop its lock.
_HELD: list[JobLock] = []


def application_name(command: str, job_id: str) -> str:
    """What pg_stat_activity shows for the holder (Postgres keeps 63 bytes)."""
    return f"recon {command} {job_id} pid={os.getpid()}@{socket.gethostname()}"[:63]


def acquire(pg_url: str, command: str, *job_ids: str) -> JobLock:
    """Lock every job id (or none: ConfigError naming the holder). Released when the current click
    command ends, if there is one; otherwise call `release()`."""
    conn = psycopg.connect(
        pg_url, autocommit=True, connect_timeout=10, application_name=application_name(command, job_ids[0])
    )
    try:
        for job_id in job_ids:
            key_row = conn.execute("SELECT hashtextextended(%s, 0)", (_NAMESPACE + job_id,)).fetchone()
            assert key_row is not None
            key = int(key_row[0])
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not got or not got[0]:
                raise ConfigError(
                    f"job {job_id} is already being written by another process ({_holder(conn, key)}); "
                    "wait for it to finish, or stop it: one process per job id"
                )
    except BaseException:
        conn.close()
        raise
    lock = JobLock(conn, job_ids)
    _HELD.append(lock)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(lock.release)
    log.debug("holding the lock of job %s", ", ".join(job_ids))
    return lock


def _holder(conn: psycopg.Connection[Any], key: int) -> str:
    row = conn.execute(_HOLDER_SQL, {"key": key}).fetchone()
    if row is None:
        return "holder unknown: it may just have finished"
    pid, app, client, since = row
    where = f"from {client}" if client else "on a local socket"
    started = since.strftime("%Y-%m-%d %H:%M:%S %Z") if since else "?"
    return f"{app or 'no application_name'}; Postgres backend pid {pid} {where}, connected since {started}"
