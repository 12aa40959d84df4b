"""Apply's decision per person (`runner.rules.apply`): which merge, the outcome, the version rule and
what is written. Pure: no stack needed."""

from __future__ import annotations

import json
from uuid import UUID

from runner.rules.apply import (
    NO_CHANGES,
    SUCCESS,
    already_applied,
    decide,
    needs_three_way,
    three_way_pairs,
    version_after,
)
from runner.rules.engine import NOT_FOUND
from runner.rules.merge import PersonDiff
from runner.stores.persons import AppliedByJob, PgPerson

P = UUID("0190f3a8-7c2e-7b4a-9c1d-2e3f4a5b6c7d")
Q = UUID("0190f3a8-7c2e-7b4a-9c1d-2e3f4a5b6c7e")
T1 = "2026-01-07T09:00:00+00:00"
T2 = "2026-01-08T10:00:00+00:00"


def diff(uuid=P, baseline=12, set_=None, unset=None) -> PersonDiff:
    return PersonDiff(7, uuid, baseline, dict(set_ or {}), {}, dict(unset or {}))


def row(properties, version, uuid=P) -> PgPerson:
    return PgPerson(41, uuid, properties, version, False, "2026-01-01 00:00:00.000000")


WORKED = diff(set_={"plan": ("enterprise", T2)}, unset={"legacy": T1})


def test_row_at_the_baseline_takes_the_simple_merge_and_the_next_version():
    result, write = decide(WORKED, row({"plan": "pro", "legacy": "x"}, 12), None, dry_run=False, backup=True)
    assert result.outcome == SUCCESS
    assert result.properties_after == {"plan": "enterprise"}
    assert (result.version_before, result.version_after) == (12, 13)
    assert write is not None and write.version_after == 13
    assert json.loads(write.set_json) == {"plan": "enterprise"}
    assert write.metadata_removed == ["legacy"]
    assert json.loads(write.pending_operations_json)  # the backup's pending operations


def test_row_past_the_baseline_merges_three_way_against_the_historic_state():
    # Someone set `source` since the baseline: kept; the diff's own change still lands.
    historic = {"plan": "pro", "legacy": "x"}
    current = {"plan": "pro", "legacy": "x", "source": "ads"}
    result, write = decide(WORKED, row(current, 15), historic, dry_run=False, backup=True)
    assert result.outcome == SUCCESS
    assert result.properties_after == {"plan": "enterprise", "source": "ads"}
    assert result.version_after == 16 and write is not None


def test_row_past_the_baseline_without_a_historic_state_is_not_found():
    result, write = decide(WORKED, row({"plan": "pro"}, 15), None, dry_run=False, backup=True)
    assert result.outcome == NOT_FOUND and write is None
    assert result.properties_before == {"plan": "pro"} and result.properties_after is None


def test_nothing_to_change_is_no_changes_and_writes_nothing():
    result, write = decide(WORKED, row({"plan": "enterprise"}, 12), None, dry_run=False, backup=True)
    assert result.outcome == NO_CHANGES and write is None
    assert result.version_after == result.version_before == 12


def test_postgres_behind_clickhouse_jumps_past_the_baseline():
    # NULL counts as 0 and stays updatable; the new version is never below ClickHouse's baseline.
    result, _ = decide(
        diff(baseline=0, set_={"plan": ("x", T2)}), row({}, None), None, dry_run=False, backup=True
    )
    assert result.outcome == SUCCESS and result.version_after == 1
    assert version_after(3, 12) == 13
    assert version_after(None, 0) == 1
    assert version_after(20, 12) == 21


def test_dry_run_reports_the_update_without_a_write():
    result, write = decide(WORKED, row({"plan": "pro"}, 12), None, dry_run=True, backup=True)
    assert result.outcome == SUCCESS and write is None


def test_without_backups_no_pending_operations_are_kept():
    _, write = decide(WORKED, row({"plan": "pro"}, 12), None, dry_run=False, backup=False)
    assert write is not None and write.pending_operations_json == "[]"


def test_three_way_pairs_are_the_locked_rows_past_their_baseline():
    rows = {P: row({}, 12), Q: row({}, 14, uuid=Q)}
    other = UUID(int=1)
    diffs = [diff(P), diff(Q), diff(other)]
    assert three_way_pairs(diffs, rows) == [(Q, 12)]
    assert not needs_three_way(diff(P, baseline=0), row({}, None))


def test_already_applied_reports_the_earlier_update():
    payload = json.dumps({"properties": json.dumps({"plan": "enterprise"}), "version": 13})
    result = already_applied(WORKED, AppliedByJob(13, payload))
    assert result.outcome == SUCCESS and result.already_done
    assert result.properties_after == {"plan": "enterprise"} and result.version_after == 13
    assert result.item.person_uuid == P
