"""Non-finite numbers are bad usage (exit 2) for every option that takes seconds or a rate; before,
`--max-rate inf` ended in an unexpected ValueError (exit 1) and `--publish-timeout nan` was accepted."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from runner.cli import main


@pytest.mark.parametrize(
    "args",
    [
        ["apply", "--job-id", "j", "--max-rate", "inf"],
        ["apply", "--job-id", "j", "--max-rate", "nan"],
        ["apply", "--job-id", "j", "--publish-timeout", "nan"],
        ["restore", "--job-id", "j", "--max-rate", "nan"],
        ["outbox", "retry", "--all", "--publish-timeout", "inf"],
    ],
)
def test_non_finite_numbers_exit_2(args) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "finite" in result.output or "range" in result.output


def test_non_finite_rate_from_the_environment_exits_2(monkeypatch) -> None:
    monkeypatch.setenv("RECON_MAX_RATE", "Infinity")
    result = CliRunner().invoke(main, ["apply", "--job-id", "j"])
    assert result.exit_code == 2, result.output
    assert "not a finite number" in result.output
