"""`runner.config.redact`: URLs, libpq keywords and the environment's secrets are masked in any text."""

from __future__ import annotations

import pytest

from runner.config import redact


def test_urls_keywords_and_malformed_urls() -> None:
    assert redact.url("postgresql://bob:S3CRET@[::1/db") == "postgresql://bob:***@[::1/db"
    assert redact.url("https://u:p@ss@ch:8443/db") == "https://u:***@ch:8443/db"
    assert redact.url("postgresql://bob@host/db") == "postgresql://bob@host/db"
    assert redact.url(None) == "(not set)"
    assert redact.text("host=db password='a b' user=x") == "host=db password=*** user=x"
    assert redact.text("PASSWORD=hunter22 x") == "PASSWORD=*** x"


def test_environment_secrets_are_masked_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_DB", "postgresql://bob:p%40ss-word@db/x")
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", "ch-secret-1")
    redact.refresh()
    try:
        out = redact.text("auth failed for p@ss-word and p%40ss-word; ch-secret-1 rejected")
        assert out == "auth failed for *** and ***; *** rejected"
    finally:
        monkeypatch.undo()
        redact.refresh()


def test_text_without_credentials_is_unchanged() -> None:
    line = '{"email": "user@example.com", "url": "https://example.com/a?b=c"}'
    assert redact.text(line) == line
