"""The throwaway PostgreSQL cluster: finding the server binaries, `initdb` (trust auth, loopback only, fsync
off), `pg_ctl start` on a free port with the database `posthog`, `pg_ctl stop`, and whether it runs.

`initdb` refuses to run as root, so as root the cluster runs as the `postgres` system user; when that
user cannot reach the state directory, the cluster lives under the system temp dir (`cluster_root`).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from runner.config import settings
from runner.local.stack.processes import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    StackError,
    free_port,
    log_tail,
    pid_alive,
    port_open,
    wait,
)

log = logging.getLogger("runner.local.stack")  # the name it had before the split: same log lines

PG_DATABASE = "posthog"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "postgres"
# Unix socket paths are limited to 107 bytes; beyond this the cluster listens on TCP only.
_MAX_SOCKET_DIR = 90
_PG_BINARIES = ("initdb", "pg_ctl", "postgres")

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found. They come with the Debian "
    "package `postgresql` (or a versioned one such as `postgresql-15`): install them with "
    "`sudo apt-get install -y postgresql` or `bash scripts/install-system-deps.sh`, "
    "or point RECON_PG_BINDIR at a directory that holds them."
)


class PostgresNotInstalled(settings.ConfigError):
    """The PostgreSQL server binaries are missing (exit 2, nothing started)."""


def _is_root() -> bool:
    return os.geteuid() == 0


def _pg_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise StackError(
            f"running as root needs the `{PG_SYSTEM_USER}` system user to own the throwaway cluster "
            "(initdb refuses root); the Debian package `postgresql` creates it, or run as a normal user"
        ) from None


def _as_pg_user() -> dict[str, Any]:
    """subprocess keyword arguments that drop root to the postgres system user."""
    if not _is_root():
        return {}
    account = _pg_account()
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _pg_user_can_enter(directory: Path) -> bool:
    result = subprocess.run(["test", "-x", str(directory)], check=False, **_as_pg_user())
    return result.returncode == 0


def cluster_root(state: Path) -> Path:
    """Directory holding the cluster (`data/`) and its log; reachable by the user running Postgres."""
    preferred = state / "postgres"
    if not _is_root() or _pg_user_can_enter(state):
        return preferred
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"recon-postgres-{digest}"


def _prepare_pg_root(root: Path) -> None:
    if not _is_root():
        root.mkdir(parents=True, exist_ok=True)
        return
    account = _pg_account()
    if root.is_symlink():
        raise StackError(f"{root} is a symlink; refusing to use it for the Postgres cluster")
    if root.exists():
        if root.stat().st_uid not in (account.pw_uid, 0):
            raise StackError(f"{root} is owned by another user; remove it or set RECON_STATE_DIR")
    else:
        root.mkdir(parents=True, mode=0o700)
    os.chown(root, account.pw_uid, account.pw_gid)
    root.chmod(0o700)


def _has_pg_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in _PG_BINARIES)


def _pg_version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/(\d+)(?:\.(\d+))?/", path)
    return tuple(int(part) for part in match.groups() if part) if match else (0,)


def find_pg_bindir() -> Path:
    """Directory with initdb/pg_ctl/postgres: RECON_PG_BINDIR, `pg_config --bindir`,
    /usr/lib/postgresql/*/bin (newest first), then PATH."""
    candidates: list[Path] = []
    explicit = os.environ.get("RECON_PG_BINDIR")
    if explicit:
        candidates.append(Path(explicit))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))
    installed = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += [Path(p) for p in sorted(installed, key=_pg_version_key, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for candidate in candidates:
        if _has_pg_binaries(candidate):
            return candidate
    raise PostgresNotInstalled(INSTALL_HINT)


def _pg_url(port: int, database: str = PG_DATABASE) -> str:
    return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/{database}"


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        return int(first.strip())
    except (OSError, IndexError, ValueError):
        return None


def _run_pg(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
        **_as_pg_user(),
    )


def _initdb(bindir: Path, root: Path, data_dir: Path) -> None:
    result = _run_pg(
        [
            str(bindir / "initdb"),
            "--pgdata",
            str(data_dir),
            "--username",
            PG_SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        ],
        cwd=root,
    )
    if result.returncode != 0:
        raise StackError(f"initdb failed:\n{result.stdout}{result.stderr}")
    # A throwaway cluster: durability off, loopback only.
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# recon local stack (throwaway)\n"
            "listen_addresses = '127.0.0.1'\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "max_connections = 200\n"
        )


def start(bindir: Path, state: Path) -> dict[str, Any]:
    """Create the cluster if needed and start it on a free loopback port; returns its part of stack.json."""
    root = cluster_root(state)
    _prepare_pg_root(root)
    data_dir = root / "data"
    log_file = root / "postgres.log"
    if not (data_dir / "PG_VERSION").exists():
        if data_dir.exists():
            shutil.rmtree(data_dir)
        _initdb(bindir, root, data_dir)
    socket_dir = str(data_dir) if len(str(data_dir)) <= _MAX_SOCKET_DIR else ""
    last_error = ""
    for _attempt in range(3):  # a free port can be taken between choosing it and binding it
        port = free_port()
        options = " ".join(
            shlex.quote(opt)
            for opt in ("-p", str(port), "-c", "listen_addresses=127.0.0.1", "-k", socket_dir)
        )
        result = _run_pg(
            [
                str(bindir / "pg_ctl"),
                "start",
                "--pgdata",
                str(data_dir),
                "--log",
                str(log_file),
                "--wait",
                "--timeout",
                str(int(START_TIMEOUT)),
                "-o",
                options,
            ],
            cwd=root,
            timeout=START_TIMEOUT + 10,
        )
        if result.returncode == 0 and wait(functools.partial(port_open, port), 5):
            pid = postmaster_pid(data_dir)
            _create_database(port)
            return {
                "url": _pg_url(port),
                "port": port,
                "pid": pid,
                "data_dir": str(data_dir),
                "bin_dir": str(bindir),
                "log_file": str(log_file),
                "socket_dir": socket_dir or None,
            }
        last_error = f"{result.stdout}{result.stderr}\n{log_tail(log_file)}"
        stop(bindir, data_dir, port=None)
    raise StackError(f"PostgreSQL did not start:\n{last_error}")


def _create_database(port: int) -> None:
    import psycopg

    with psycopg.connect(_pg_url(port, "postgres"), autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')


def stop(bindir: Path | None, data_dir: Path, port: int | None) -> None:
    """Stop the cluster in `data_dir` if its postmaster runs, and wait until its port is free."""
    pid = postmaster_pid(data_dir)
    ours = pid_alive(pid)
    if ours:
        if bindir is None or not _has_pg_binaries(bindir):
            bindir = find_pg_bindir()
        result = _run_pg(
            [
                str(bindir / "pg_ctl"),
                "stop",
                "--pgdata",
                str(data_dir),
                "--mode",
                "fast",
                "--wait",
                "--timeout",
                str(int(STOP_TIMEOUT)),
            ],
            cwd=data_dir.parent,
            timeout=STOP_TIMEOUT + 10,
        )
        if result.returncode != 0 and pid_alive(pid):
            log.warning("pg_ctl stop failed (%s); stopping postmaster %s now", result.stderr.strip(), pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # type: ignore[arg-type]  # pid_alive(None) is False
        if not wait(lambda: not pid_alive(pid), STOP_TIMEOUT):
            raise StackError(f"PostgreSQL (pid {pid}) did not stop")
    if ours and port and not wait(lambda: not port_open(port), STOP_TIMEOUT):
        raise StackError(f"port {port} is still in use after stopping PostgreSQL")


def running(info: dict[str, Any]) -> bool:
    """Whether the cluster recorded in `info` (stack.json's `postgres`) runs and listens."""
    data_dir = info.get("data_dir")
    if not data_dir:
        return False
    pid = postmaster_pid(Path(data_dir))
    return pid is not None and pid == info.get("pid") and pid_alive(pid) and port_open(info.get("port"))
