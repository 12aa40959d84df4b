"""Restore rules (spec R13.4): from a backup row and the current Postgres row, the state to write.

Pure functions, no I/O. Absent keys and JSON null values compare alike (`dict.get`), and values
compare with Python equality, as in the original.

The strategies, by what they undo:

- `keep_newer` (default): the job's own keys that still hold what the job wrote.
- `restore_wins`: the job's own keys, over any later change to them. Keys the job never touched keep
  their current values.
- `full_overwrite`: the whole backed-up state, discarding every later change to any key.

"The job's own keys" are the keys whose value (or presence) differs between the backup's before and
after states. Deliberate differences from the original (R13.4), which walked every key of the
before-state: `restore_wins` there also reverted later changes to keys the job never touched (a user's
edit of `email` was undone when the job had only changed `plan`), and neither strategy could remove a
key the run had *added*, so "apply then restore" did not return the person to where it was. Here an
added key is removed by `keep_newer` when it still holds what the run wrote, and always by
`restore_wins`. A backup without an after-state (written by other tools) gives no way to tell the job's
keys apart: every key of its before-state counts, as in the original.

`decide` is the restore's decision per backup entry, as the batch engine (`runner.engine`) asks for it:
`not_found` when the locked row is not the person the job changed (another pk under the same uuid),
`skipped` when the strategy finds nothing to restore, else `restored`, with what to write (version =
current + 1, NULL counting as 0).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from runner.rules.engine import INVALID_VALUE, NOT_FOUND, TEAM_FAILED, VERSION_CONFLICT
from runner.rules.merge import json_dumps, json_loads
from runner.rules.records import AppliedByJob, PersonOutcome, PersonWrite, PgPerson

STRATEGIES = ("keep_newer", "restore_wins", "full_overwrite")

RESTORED = "restored"
SKIPPED = "skipped"
OUTCOMES = (RESTORED, SKIPPED, NOT_FOUND, VERSION_CONFLICT, INVALID_VALUE, TEAM_FAILED)


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


def _touched(key: str, before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Did the job change `key` (its value, or whether it is present)?"""
    return (key in before) != (key in after) or before.get(key) != after.get(key)


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
    if after is None:
        candidate_keys = list(before.properties)  # the job's own keys are unknown
    else:
        candidate_keys = [k for k in before.properties if _touched(k, before.properties, after_props)]
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
    """The new metadata maps as the set-based write takes them (`runner.stores.persons`): each map becomes
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


# --- the decision per backup entry -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupEntry:
    team_id: int
    person_id: int
    uuid: UUID
    before: PersonState
    after: PersonState | None

    @classmethod
    def of_row(cls, team_id: int, row: Sequence[Any]) -> BackupEntry:
        """From a backup row as `runner.stores.backups.backup_pages` reads it."""
        person_id, uuid, props, updated, operation, props_after, updated_after, operation_after = row
        after = None if props_after is None else PersonState.of(props_after, updated_after, operation_after)
        return cls(team_id, int(person_id), uuid, PersonState.of(props, updated, operation), after)


# An entry's result: the engine's `PersonOutcome` of a backup entry (`item` is the BackupEntry).
PersonRestore = PersonOutcome[BackupEntry]


def decide(
    strategy: str,
    entry: BackupEntry,
    pg: PgPerson,
    metadata: tuple[Any, Any] | None,
    *,
    dry_run: bool,
    timestamp: str,
) -> tuple[PersonRestore, PersonWrite | None]:
    """One backup entry against its locked row and that row's metadata maps (last_updated_at,
    last_operation). Returns the result and what to write (None: nothing, or a dry run); `timestamp`
    is when the restore ran (its own backup's pending operations)."""
    if pg.id != entry.person_id or metadata is None:
        return PersonOutcome(entry, NOT_FOUND), None
    current = PersonState.of(pg.properties, *metadata)
    change = restore_change(strategy, entry.before, entry.after, current)
    if change is None:
        return PersonOutcome(entry, SKIPPED, pg.properties, pg.properties, pg.version, pg.version), None
    version_after = (pg.version or 0) + 1
    result = PersonOutcome(entry, RESTORED, pg.properties, change.state.properties, pg.version, version_after)
    if dry_run:
        return result, None
    updated_at_set, operation_set, removed = metadata_delta(current, change.state)
    write = PersonWrite(
        person=pg,
        properties_json=json_dumps(change.state.properties),
        updated_at_set_json=json_dumps(updated_at_set),
        operation_set_json=json_dumps(operation_set),
        metadata_removed=removed,
        version_after=version_after,
        pending_operations_json=json_dumps(restore_operations(change, timestamp)),
    )
    return result, write


def already_restored(entry: BackupEntry, earlier: AppliedByJob) -> PersonRestore:
    """A person an earlier attempt of this restore job restored: reported as that write, not redone."""
    message = json.loads(earlier.payload)
    return PersonOutcome(
        entry,
        RESTORED,
        properties_after=json_loads(message["properties"]),
        version_after=earlier.version,
        already_done=True,
    )
