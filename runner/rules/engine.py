"""Rules shared by `runner apply` and `runner restore` (issue 11): how hard a row lock is tried, how
many messages a batch keeps in memory, and what a team's outcome counts make of the team. Pure: no I/O.

Both commands lock a chunk's rows with `SKIP LOCKED` in LOCK_ATTEMPTS quick attempts; rows still held
(or that changed between their lock and the write) are retried once at the end of the team, waiting for
each row lock up to the session's `lock_timeout` while RETRY_WAIT_BUDGET lasts.
"""

from __future__ import annotations

from collections.abc import Mapping

from runner.rules import statuses

LOCK_ATTEMPTS = 3
LOCK_RETRY_WAITS = (0.2, 1.0)  # seconds before the 2nd and 3rd attempt
# The end-of-team retry waits for each held row (up to the session's lock_timeout) while this budget
# lasts; past it the rows left are tried without waiting, so many held rows cannot stall the run.
RETRY_WAIT_BUDGET = 30.0

# Messages of the open transaction kept in memory for publishing after its commit; past this (a large
# --batch-size, or 0) the publisher reads them back from the outbox instead, so memory stays flat.
KEPT_MESSAGES = 50_000

NOT_FOUND = "not_found"
VERSION_CONFLICT = "version_conflict"
INVALID_VALUE = "invalid_value"
TEAM_FAILED = "team_failed"
# Persons a run did not apply although it finished their team: the team is `incomplete`, exit 1.
PERSON_FAILURES = (VERSION_CONFLICT, INVALID_VALUE)

CHANGED_UNDER_WRITE = "the row changed between its lock and the write"
HELD_PAST_LOCK_TIMEOUT = "another transaction held the row past lock_timeout"
HELD = "another transaction held the row"


def finished_team_status(outcomes: Mapping[str, int]) -> tuple[str, str | None]:
    """Status and error of a team that ran to its end: `incomplete` (with the error naming how many
    persons were not applied, by outcome) when any person failed on its own, else `succeeded`."""
    if any(outcomes.get(kind) for kind in PERSON_FAILURES):
        return statuses.INCOMPLETE, statuses.failures_text(dict(outcomes), PERSON_FAILURES)
    return statuses.SUCCEEDED, None
