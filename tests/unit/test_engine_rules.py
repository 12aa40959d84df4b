"""The rules apply and restore share (issue 11): what a finished team's outcome counts make of it, and how
a team's persons are counted."""

from __future__ import annotations

from collections import Counter

from runner.engine.job import TeamCounts
from runner.rules.engine import PERSON_FAILURES, finished_team_status
from runner.stores import ledger


def test_a_team_without_person_failures_succeeded():
    assert finished_team_status({"success": 3, "no_changes": 1, "not_found": 2}) == (ledger.SUCCEEDED, None)
    assert finished_team_status({}) == (ledger.SUCCEEDED, None)
    assert finished_team_status({"version_conflict": 0, "invalid_value": 0}) == (ledger.SUCCEEDED, None)


def test_persons_not_applied_make_the_team_incomplete_naming_them():
    status, error = finished_team_status({"success": 5, "version_conflict": 2, "invalid_value": 1})
    assert status == ledger.INCOMPLETE
    assert error == "incomplete: persons not applied: 2 version_conflict, 1 invalid_value"
    assert finished_team_status({"invalid_value": 1})[1] == "incomplete: persons not applied: 1 invalid_value"


def test_team_failed_persons_are_not_person_failures():
    # A rolled-back batch is the team's failure (status failed, decided by the error boundary).
    assert "team_failed" not in PERSON_FAILURES
    assert finished_team_status({"team_failed": 4}) == (ledger.SUCCEEDED, None)


def test_team_failed_persons_count_as_neither_processed_nor_skipped():
    # R9.14: processed counts the persons handled; a rolled-back batch handled nobody.
    whole = TeamCounts(1, ledger.FAILED, outcomes=Counter({"team_failed": 1}))
    assert (whole.processed, whole.updated, whole.skipped) == (0, 0, 0)
    part = TeamCounts(2, ledger.FAILED, outcomes=Counter({"success": 2, "team_failed": 2}), updated=2)
    assert (part.processed, part.skipped) == (2, 0)
    ran = TeamCounts(3, outcomes=Counter({"success": 3, "no_changes": 1, "not_found": 1}), updated=3)
    assert (ran.processed, ran.skipped) == (5, 2)
