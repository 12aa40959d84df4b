"""Restore rules (spec R13.4): from a backup row and the current Postgres row, the state to write.

Pure functions, no I/O. Absent keys and JSON null values compare alike (`dict.get`), and values
compare with Python equality, as in the original.

Deliberate difference from the original: `keep_newer` and `restore_wins` also consider the keys the
reconciliation *added* (present after, absent before). The original only walked the keys of the
before-state, so a restore could never remove a key the run had added and "apply then restore" did not
return the person to where it was. Here such a key is removed by `keep_newer` when it still holds what
the run wrote, and always by `restore_wins`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("keep_newer", "restore_wins", "full_overwrite")


@dataclass(frozen=True)
class PersonState:
    properties: dict[str, Any]
    last_updated_at: dict[str, Any]
    last_operation: dict[str, Any]

    @classmethod
    def of(cls, properties: Any, last_updated_at: Any, last_operation: Any) -> PersonState:
        return cls(_as_map(properties), _as_map(last_updated_at), _as_map(last_operation))


@dataclass(frozen=True)
class RestoreChange:
    """What a restore writes, and which keys it put back or removed."""

    state: PersonState
    restored_keys: tuple[str, ...]
    removed_keys: tuple[str, ...]


def _as_map(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def validate_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown restore strategy {strategy!r}; expected one of: {', '.join(STRATEGIES)}")
    return strategy


def restore_change(
    strategy: str, before: PersonState, after: PersonState | None, current: PersonState
) -> RestoreChange | None:
    """The state to write for one person, or None when there is nothing to restore."""
    validate_strategy(strategy)
    if strategy == "full_overwrite":
        if current.properties == before.properties:
            return None
        return RestoreChange(
            PersonState(dict(before.properties), dict(before.last_updated_at), dict(before.last_operation)),
            tuple(k for k in before.properties if current.properties.get(k) != before.properties[k]),
            tuple(k for k in current.properties if k not in before.properties),
        )

    after_props = after.properties if after is not None else {}
    candidate_keys = list(before.properties)
    candidate_keys += [k for k in after_props if k not in before.properties]

    props = dict(current.properties)
    updated_at = dict(current.last_updated_at)
    operation = dict(current.last_operation)
    restored: list[str] = []
    removed: list[str] = []
    for key in candidate_keys:
        now_value = props.get(key)
        before_value = before.properties.get(key)
        if now_value == before_value:
            continue
        if strategy == "keep_newer" and now_value != after_props.get(key):
            continue  # someone changed it after the run: theirs is newer
        if key in before.properties:
            props[key] = before.properties[key]
            restored.append(key)
        elif key in props:
            del props[key]
            removed.append(key)
        else:
            continue
        for meta, before_meta in ((updated_at, before.last_updated_at), (operation, before.last_operation)):
            if key in before_meta:
                meta[key] = before_meta[key]
            else:
                meta.pop(key, None)
    if not restored and not removed:
        return None
    return RestoreChange(PersonState(props, updated_at, operation), tuple(restored), tuple(removed))


def restore_operations(change: RestoreChange, timestamp: str) -> list[dict[str, Any]]:
    """`pending_operations` of the restore's own backup row (§2.6 shape): a restored key is a `set` of
    its before-value, a removed key an `unset`; `timestamp` is when the restore ran."""
    ops = [
        {"key": key, "value": change.state.properties[key], "timestamp": timestamp, "operation": "set"}
        for key in change.restored_keys
    ]
    ops += [
        {"key": key, "value": None, "timestamp": timestamp, "operation": "unset"}
        for key in change.removed_keys
    ]
    return ops


_MISSING = object()


def metadata_delta(
    current: PersonState, new: PersonState
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The new metadata maps as the set-based write takes them (`runner.persons`): each map becomes
    `(current - removed) || set`. Returns (last_updated_at entries to set, last_operation entries to
    set, keys to remove from both maps)."""
    removed = sorted(
        {k for k in current.last_updated_at if k not in new.last_updated_at}
        | {k for k in current.last_operation if k not in new.last_operation}
    )
    gone = set(removed)

    def to_set(now: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in wanted.items() if k in gone or now.get(k, _MISSING) != v}

    return (
        to_set(current.last_updated_at, new.last_updated_at),
        to_set(current.last_operation, new.last_operation),
        removed,
    )
