"""Keep secrets out of every output: URLs shown with their password masked, known passwords never printed.

Two layers, because error text comes from many places (libpq, clickhouse-connect, tracebacks):
- `url(value)` masks the password of one URL for display, and never fails, even on a malformed URL.
- `text(value)` masks the credentials of every URL and libpq `password=` keyword in free text, and every
  password found in the environment (URL credentials of any variable, `*PASSWORD*` variables), also
  when they appear on their own or percent-decoded.

`install()` wraps stdout and stderr so that everything the process prints goes through `text()`: logs,
click messages, tracebacks shown with `--debug`.
"""

from __future__ import annotations

import io
import os
import re
import sys
from typing import Any
from urllib.parse import unquote

MASK = "***"

# scheme://user:password@ ; the password runs to the last '@' of the token (passwords may hold '@').
# The scheme is tried only where a run of scheme characters begins (the run's leading digits or `+.-`
# kept in `head`) and is never given back: a long run such as a 1 MB property value costs linear time,
# not quadratic (an unanchored scheme was retried at every character of the run).
_URL_CREDENTIALS = re.compile(
    r"(?P<head>(?<![A-Za-z0-9+.\-])[0-9+.\-]*+[A-Za-z][A-Za-z0-9+.\-]*+://[^\s:/@'\"]*):(?P<password>[^\s]*)@"
)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.I)
# Shorter passwords would mask unrelated text; they are still masked inside URLs.
_MIN_LITERAL = 4


def url(value: str | None) -> str:
    """`value` with the password of its credentials masked (for display); never raises."""
    if not value:
        return "(not set)"
    return text(value)


def _env_secrets() -> set[str]:
    found: set[str] = set()
    for name, value in os.environ.items():
        if not value:
            continue
        if "PASSWORD" in name.upper():
            found.add(value)
        for match in _URL_CREDENTIALS.finditer(value):
            found.add(match.group("password"))
    expanded = set(found)
    for secret in found:
        expanded.add(unquote(secret))
    return {s for s in expanded if len(s) >= _MIN_LITERAL}


# The environment's secrets, longest first; read once (scanning the environment on every write cost
# more than applying a person), again by `refresh()` and at every `install()`.
_secrets: tuple[str, ...] | None = None


def refresh() -> None:
    """Read the environment's secrets again (after it changed)."""
    global _secrets
    _secrets = tuple(sorted(_env_secrets(), key=len, reverse=True))


def text(value: str) -> str:
    """Free text with every credential it may hold masked."""
    if not value:
        return value
    if _secrets is None:
        refresh()
    assert _secrets is not None
    masked = value
    if "://" in masked:  # cheap tests first: most output holds neither
        masked = _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{MASK}@", masked)
    if "=" in masked and "assword" in masked.lower():
        masked = _KEYWORD_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}", masked)
    for secret in _secrets:
        if secret in masked:
            masked = masked.replace(secret, MASK)
    return masked


class RedactingStream(io.TextIOBase):
    """A text stream that masks credentials in whatever is written to it."""

    def __init__(self, inner: Any):
        self.inner = inner

    def write(self, s: Any) -> int:
        if isinstance(s, str):
            self.inner.write(text(s))
            return len(s)
        return int(self.inner.write(s))  # bytes: the inner text stream refuses them, as it should

    def flush(self) -> None:
        self.inner.flush()

    def isatty(self) -> bool:
        return bool(self.inner.isatty())

    def fileno(self) -> int:
        return int(self.inner.fileno())

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(getattr(self.inner, "encoding", None) or "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.inner, "errors", None)


def install() -> None:
    """Route this process's stdout and stderr through `text()` (idempotent), with the secrets of the
    environment as it is now."""
    refresh()
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
