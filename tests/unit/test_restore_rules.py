import pytest

from runner.restore_rules import PersonState, restore_change, validate_strategy


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
