"""Processes, ports and waiting for the local stack: free loopback ports, whether a pid is alive (reaping our
own dead children), a process's command line, polling with a deadline, the tail of a log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class StackError(RuntimeError):
    """A part of the local stack failed to start or stop."""


# Tansu processes started by this Python process, kept so that they can be reaped after a kill
# (a dead child that is never waited for stays a zombie and looks alive to `kill(pid, 0)`).
SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


def free_port() -> int:
    """A loopback port nobody listens on now (it can be taken before it is bound: callers retry)."""
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
    child = SPAWNED.get(pid)
    if child is not None and child.poll() is not None:
        SPAWNED.pop(pid, None)
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


def cmdline(pid: int) -> str:
    """The command line of a process, '' when it is gone or there is no procfs."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
