"""`stack.json` in the state directory: where it is, reading and writing it (atomically), and the lock that
lets one `up`/`down` run at a time per state directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runner.config import settings


def state_dir(directory: str | os.PathLike[str] | None) -> Path:
    """`directory` when given, else the settings' state directory (`RECON_STATE_DIR`, default `.recon`)."""
    return Path(directory).resolve() if directory is not None else settings.state_dir()


def path(state: Path) -> Path:
    return state / "stack.json"


def read(state: Path) -> dict[str, Any]:
    """The content of stack.json; {} when it is missing or unreadable."""
    try:
        data = json.loads(path(state).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write(state: Path, info: dict[str, Any]) -> None:
    """Replace stack.json in one step (a reader never sees half a file)."""
    target = path(state)
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, target)


@contextlib.contextmanager
def locked(state: Path) -> Iterator[None]:
    """One `up`/`down` at a time per state directory."""
    state.mkdir(parents=True, exist_ok=True)
    with (state / "stack.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
