import pytest

from runner.rules.restore import (
    PersonState,
    metadata_delta,
    restore_change,
    restore_operations,
    validate_strategy,
)


def state(props, lua=None, lop=None):
    return PersonState.of(props, lua or {}, lop or {})


BEFORE = state(
    {"plan": "pro", "legacy": "x", "source": "seo"},
    {"plan": "2026-01-01T00:00:00+00:00"},
    {"plan": "set"},
)
# what the run wrote: plan changed, legacy removed, a new key added by $set_once
AFTER = state(
    {"plan": "enterprise", "source": "seo", "ref": "ads"},
    {"plan": "2026-01-08T10:00:00+00:00", "ref": "2026-01-06T21:00:00+00:00"},
    {"plan": "set", "ref": "set_once"},
)


@pytest.mark.parametrize("strategy", ["keep_newer", "restore_wins", "full_overwrite"])
def test_untouched_since_the_run_returns_exactly_to_before(strategy):
    change = restore_change(strategy, BEFORE, AFTER, AFTER)
    assert change is not None
    assert change.state == BEFORE


def test_keep_newer_keeps_values_changed_after_the_run():
    current = state({"plan": "team", "source": "seo", "ref": "ads", "legacy": "y"})
    change = restore_change("keep_newer", BEFORE, AFTER, current)
    assert change is not None
    # plan and legacy were changed by someone else since: kept; ref still holds the run's value: removed
    assert change.state.properties == {"plan": "team", "source": "seo", "legacy": "y"}
    assert change.removed_keys == ("ref",)


def test_restore_wins_overwrites_later_changes_on_touched_keys_only():
    current = state({"plan": "team", "source": "seo", "ref": "other", "new": 1})
    change = restore_change("restore_wins", BEFORE, AFTER, current)
    assert change is not None
    assert change.state.properties == {"plan": "pro", "source": "seo", "legacy": "x", "new": 1}


def test_restore_wins_leaves_keys_the_job_never_touched():
    """Issue 13 point 5: the job changed plan only; a later edit of email is the user's, not the job's."""
    before = state({"plan": "free", "email": "old@example.com"})
    after = state({"plan": "paid", "email": "old@example.com"})
    current = state({"plan": "team", "email": "new@example.com"})
    wins = restore_change("restore_wins", before, after, current)
    assert wins is not None and wins.state.properties == {"plan": "free", "email": "new@example.com"}
    assert wins.restored_keys == ("plan",)
    assert restore_change("keep_newer", before, after, current) is None  # plan changed since: kept
    full = restore_change("full_overwrite", before, after, current)
    assert full is not None and full.state.properties == {"plan": "free", "email": "old@example.com"}


def test_without_an_after_state_every_backed_up_key_counts():
    before = state({"plan": "free", "email": "old@example.com"})
    current = state({"plan": "team", "email": "new@example.com"})
    change = restore_change("restore_wins", before, None, current)
    assert change is not None and change.state.properties == before.properties


def test_full_overwrite_discards_everything_since():
    current = state({"plan": "team", "new": 1})
    change = restore_change("full_overwrite", BEFORE, AFTER, current)
    assert change is not None
    assert change.state == BEFORE


def test_nothing_to_do_when_current_equals_before():
    for strategy in ("keep_newer", "restore_wins", "full_overwrite"):
        assert restore_change(strategy, BEFORE, AFTER, BEFORE) is None


def test_metadata_entries_follow_the_restored_key():
    current = state(
        {"plan": "enterprise", "source": "seo"},
        {"plan": "2026-01-08T10:00:00+00:00"},
        {"plan": "set"},
    )
    change = restore_change("keep_newer", BEFORE, AFTER, current)
    assert change is not None
    assert change.state.last_updated_at == {"plan": "2026-01-01T00:00:00+00:00"}
    # legacy had no metadata before: none is invented
    assert "legacy" not in change.state.last_updated_at


def test_null_metadata_becomes_empty_maps():
    before = PersonState.of({"a": 1}, None, None)
    assert before.last_updated_at == {} and before.last_operation == {}


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="unknown restore strategy 'keep-newer'"):
        validate_strategy("keep-newer")


def test_restore_operations_describe_the_restore_in_the_backup_shape():
    change = restore_change("keep_newer", BEFORE, AFTER, AFTER)
    assert change is not None
    ops = restore_operations(change, "2026-01-20T10:00:00+00:00")
    assert sorted((op["key"], op["operation"], op["value"]) for op in ops) == [
        ("legacy", "set", "x"),
        ("plan", "set", "pro"),
        ("ref", "unset", None),
    ]
    assert {op["timestamp"] for op in ops} == {"2026-01-20T10:00:00+00:00"}


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (
            state({}, {"a": "t1", "b": "t2"}, {"a": "set", "b": "set"}),
            state({}, {"a": "t0"}, {"b": "set_once"}),
        ),
        (state({}, {}, {}), BEFORE),
        (BEFORE, state({})),
        (AFTER, BEFORE),
        (state({}, {"a": None}, {}), state({}, {}, {"a": None})),
    ],
)
def test_metadata_delta_rebuilds_the_new_maps_the_way_the_write_does(current, new):
    updated_at_set, operation_set, removed = metadata_delta(current, new)

    def write(now, to_set):  # (now - removed) || to_set, as runner.stores.persons does in SQL
        return {**{k: v for k, v in now.items() if k not in removed}, **to_set}

    assert write(current.last_updated_at, updated_at_set) == new.last_updated_at
    assert write(current.last_operation, operation_set) == new.last_operation


def test_metadata_delta_of_a_restored_key_touches_only_that_key():
    current = state({}, {"plan": "t-run", "x": "t-x"}, {"plan": "set", "x": "set"})
    new = state({}, {"plan": "t-before", "x": "t-x"}, {"plan": "set", "x": "set"})
    assert metadata_delta(current, new) == ({"plan": "t-before"}, {}, [])


# --- the decision per backup entry (restore_rules.decide) ------------------------------------------


def _entry(person_id=41, after=AFTER):
    from uuid import UUID

    from runner.rules.restore import BackupEntry

    return BackupEntry(1, person_id, UUID(int=7), BEFORE, after)


def _row(props, version, person_id=41):
    from uuid import UUID

    from runner.stores.persons import PgPerson

    return PgPerson(person_id, UUID(int=7), props, version, False, "2026-01-01 00:00:00.000000")


def test_decide_restores_the_before_state_with_the_next_version_and_its_own_backup():
    import json

    from runner.rules.restore import RESTORED, decide

    result, write = decide(
        "keep_newer",
        _entry(),
        _row(AFTER.properties, 4),
        (AFTER.last_updated_at, AFTER.last_operation),
        dry_run=False,
        timestamp="2026-02-01T00:00:00+00:00",
    )
    assert result.outcome == RESTORED
    assert result.properties_after == BEFORE.properties
    assert (result.version_before, result.version_after) == (4, 5)
    assert write is not None and write.version_after == 5
    assert json.loads(write.properties_json or "") == BEFORE.properties
    ops = {(op["key"], op["operation"]) for op in json.loads(write.pending_operations_json)}
    assert ops == {("plan", "set"), ("legacy", "set"), ("ref", "unset")}
    assert all(
        op["timestamp"] == "2026-02-01T00:00:00+00:00" for op in json.loads(write.pending_operations_json)
    )


def test_decide_null_version_counts_as_zero():
    from runner.rules.restore import decide

    result, _ = decide(
        "full_overwrite", _entry(), _row({"x": 1}, None), ({}, {}), dry_run=False, timestamp="t"
    )
    assert result.version_after == 1


def test_decide_skips_a_person_already_at_the_before_state():
    from runner.rules.restore import SKIPPED, decide

    result, write = decide(
        "restore_wins",
        _entry(),
        _row(BEFORE.properties, 6),
        (BEFORE.last_updated_at, BEFORE.last_operation),
        dry_run=False,
        timestamp="t",
    )
    assert result.outcome == SKIPPED and write is None
    assert result.version_after == result.version_before == 6


def test_decide_another_person_under_the_same_uuid_is_not_found():
    from runner.rules.engine import NOT_FOUND
    from runner.rules.restore import decide

    result, write = decide(
        "keep_newer",
        _entry(person_id=41),
        _row(AFTER.properties, 4, person_id=99),
        ({}, {}),
        dry_run=False,
        timestamp="t",
    )
    assert result.outcome == NOT_FOUND and write is None


def test_decide_dry_run_reports_without_a_write():
    from runner.rules.restore import RESTORED, decide

    result, write = decide(
        "keep_newer", _entry(), _row(AFTER.properties, 4), ({}, {}), dry_run=True, timestamp="t"
    )
    assert result.outcome == RESTORED and write is None


def test_already_restored_reports_the_earlier_write():
    import json

    from runner.rules.restore import RESTORED, already_restored
    from runner.stores.persons import AppliedByJob

    payload = json.dumps({"properties": json.dumps({"plan": "pro"}), "version": 5})
    result = already_restored(_entry(), AppliedByJob(5, payload))
    assert result.outcome == RESTORED and result.already_done
    assert result.properties_after == {"plan": "pro"} and result.version_after == 5


def test_backup_entry_of_a_row_without_an_after_state():
    from uuid import UUID

    from runner.rules.restore import BackupEntry

    entry = BackupEntry.of_row(3, (41, UUID(int=7), {"a": 1}, None, {"a": "set"}, None, None, None))
    assert (entry.team_id, entry.person_id, entry.after) == (3, 41, None)
    assert entry.before == PersonState({"a": 1}, {}, {"a": "set"})
