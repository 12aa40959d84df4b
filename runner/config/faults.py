"""Fault injection for crash tests: `RECON_FAULT=<point>:<n>[:pause]`.

At the n-th time the process reaches `<point>` it dies on the spot (`os._exit`, no cleanup, no flush:
like a kill -9), or with `:pause` it writes `$RECON_FAULT_FILE` and waits until that file is removed
(so a test can act, e.g. stop the broker, at an exact moment). Points of the batch engine
(`runner.engine`), so of `runner apply` and `runner restore` alike:

- `before_commit`: a batch is written, not yet committed.
- `after_commit`: a batch is committed, nothing of it published.
- `mid_publish`: about to produce a message (counts messages).
- `after_batch`: a batch is committed, published and marked published (on the publishing thread, while
  the next batches go on).
- `before_lock`: a chunk's rows are about to be locked (the batch before it may still be committing;
  a chunk that is a whole batch of apply's set path reaches it on a writer thread, beside the batch
  before it).

`point()` may be reached from several threads (the engine's, the writer threads'); its count is kept
under a lock.

Unset in production: `point()` is then a dictionary lookup.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

ENV_FAULT = "RECON_FAULT"
ENV_FAULT_FILE = "RECON_FAULT_FILE"
EXIT_CODE = 86

_seen: Counter[str] = Counter()
_lock = threading.Lock()
_UNSET = object()
_spec: object | tuple[str, int, str] | None = _UNSET


def _parsed() -> tuple[str, int, str] | None:
    global _spec
    if _spec is _UNSET:
        text = os.environ.get(ENV_FAULT)
        if text:
            target, _, rest = text.partition(":")
            count_text, _, action = rest.partition(":")
            _spec = (target, int(count_text or 1), action)
        else:
            _spec = None
    return _spec  # type: ignore[return-value]


def point(name: str) -> None:
    spec = _parsed()
    if spec is None or spec[0] != name:
        return
    _target, count, action = spec
    with _lock:
        _seen[name] += 1
        seen = _seen[name]
    if seen != count:
        return
    if action == "pause":
        marker = Path(os.environ[ENV_FAULT_FILE])
        marker.write_text(f"{name}:{seen}\n")
        while marker.exists():
            time.sleep(0.05)
        return
    os._exit(EXIT_CODE)


def reset() -> None:
    """Forget the counts and re-read the environment (tests)."""
    global _spec
    _seen.clear()
    _spec = _UNSET
