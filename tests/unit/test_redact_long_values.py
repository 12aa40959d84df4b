"""Masking stays linear in the text's length: apply's output carries whole person properties, and a 1.2 MB
value made the URL pattern retry its scheme at every character (hours of CPU for one output line)."""

from __future__ import annotations

from runner.config import redact


def test_a_megabyte_value_is_masked_and_its_urls_too():
    line = '{"blob": "' + "x" * 1_200_000 + '", "db": "postgresql://bob:S3CRET@host/db"}'
    masked = redact.text(line)
    assert masked.endswith('"postgresql://bob:***@host/db"}')
    assert len(masked) == len(line) - len("S3CRET") + len(redact.MASK)


def test_a_scheme_after_digits_or_signs_is_still_found():
    assert redact.text("see 1postgres://u:pw@h and x+y.z-1://u:pw2@h") == (
        "see 1postgres://u:***@h and x+y.z-1://u:***@h"
    )
    assert redact.text("-9a://u:pw@h") == "-9a://u:***@h"
