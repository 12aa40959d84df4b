"""The statuses of a run and of its teams, as the ledger records them, and an incomplete team's error
text. Pure: no I/O."""

from __future__ import annotations

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
# The team ran to its end, but some of its persons were not applied (version_conflict after the retries,
# invalid_value): not a success; `runner report --status failed` lists it, a re-run retries them.
INCOMPLETE = "incomplete"
# Persons not applied, listed in the team's `outcomes` (with their reasons) up to this many.
FAILURES_KEPT = 100


def failures_text(outcomes: dict[str, int], kinds: tuple[str, ...]) -> str:
    """The error text of an incomplete team: how many persons were not applied, by outcome."""
    parts = [f"{outcomes[k]} {k}" for k in kinds if outcomes.get(k)]
    return f"incomplete: persons not applied: {', '.join(parts)}"
