"""Apply's decision per person (R9.2 steps 2–5, R7.4): from a diff and the locked Postgres row, the
outcome, the new state and what to write. Pure functions, no I/O: the batch engine (`runner.engine`)
locks, reads and writes; `runner.rules.merge` merges.

- The simple merge when Postgres still holds the diff's baseline version; else the three-way merge
  against ClickHouse's historic state at the baseline (`not_found` when ClickHouse has none).
- `no_changes` when the merge changes nothing, else `success` with the version rule: never below what
  ClickHouse holds (`max(pg_version, baseline) + 1`, NULL counting as 0).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from runner.rules.engine import INVALID_VALUE, NOT_FOUND, TEAM_FAILED, VERSION_CONFLICT
from runner.rules.merge import (
    PersonDiff,
    json_loads,
    pending_operations_json,
    simple_merge,
    three_way_merge,
)
from runner.rules.records import AppliedByJob, PersonOutcome, PersonWrite, PgPerson

SUCCESS = "success"
NO_CHANGES = "no_changes"
OUTCOMES = (SUCCESS, NO_CHANGES, NOT_FOUND, VERSION_CONFLICT, INVALID_VALUE, TEAM_FAILED)


# A person's result: the engine's `PersonOutcome` of a diff (`item` is the person's PersonDiff).
PersonResult = PersonOutcome[PersonDiff]


def needs_three_way(diff: PersonDiff, pg: PgPerson) -> bool:
    """Whether the person's row moved past the diff's baseline (its merge needs the historic state)."""
    return (pg.version or 0) != diff.baseline_version


def three_way_pairs(diffs: Iterable[PersonDiff], rows: Mapping[UUID, PgPerson]) -> list[tuple[UUID, int]]:
    """(uuid, baseline version) of the locked persons whose merge needs ClickHouse's historic state."""
    return [
        (d.person_uuid, d.baseline_version)
        for d in diffs
        if d.person_uuid in rows and needs_three_way(d, rows[d.person_uuid])
    ]


def version_after(pg_version: int | None, baseline_version: int) -> int:
    """Never below what ClickHouse holds: when Postgres is behind (gotcha 19) a `pg_version + 1`
    message would be dropped by ClickHouse's ReplacingMergeTree(version) and the stores would diverge
    for good; jumping past the baseline makes the repair land in both. NULL counts as 0."""
    return max(pg_version or 0, baseline_version) + 1


def decide(
    diff: PersonDiff,
    pg: PgPerson,
    historic: dict[str, Any] | None,
    *,
    dry_run: bool,
    backup: bool,
) -> tuple[PersonResult, PersonWrite | None]:
    """R9.2 steps 2–5 for a locked row: pick the merge, compute the new state and what to write (None:
    nothing to write, or a dry run)."""
    if not needs_three_way(diff, pg):  # NULL counts as 0 and stays updatable (a deliberate difference)
        merged = simple_merge(pg.properties, diff)
    elif historic is None:
        return PersonOutcome(diff, NOT_FOUND, pg.properties, None, pg.version, None), None
    else:
        merged = three_way_merge(historic, pg.properties, diff)
    if not merged.changed:
        return PersonOutcome(diff, NO_CHANGES, pg.properties, pg.properties, pg.version, pg.version), None
    after = version_after(pg.version, diff.baseline_version)
    result = PersonOutcome(diff, SUCCESS, pg.properties, merged.properties, pg.version, after)
    if dry_run:
        return result, None
    updated_at_json, operation_json = merged.metadata_json()
    set_json, set_once_json = diff.value_maps()
    set_dropped, set_once_dropped = merged.dropped(diff)
    write = PersonWrite(
        person=pg,
        version_after=after,
        pending_operations_json=pending_operations_json(diff) if backup else "[]",
        set_json=set_json,
        set_dropped=set_dropped,
        set_once_json=set_once_json,
        set_once_dropped=set_once_dropped,
        updated_at_set_json=updated_at_json,
        operation_set_json=operation_json,
        metadata_removed=merged.metadata_removed,
    )
    return result, write


def already_applied(diff: PersonDiff, applied: AppliedByJob) -> PersonResult:
    """A person an earlier attempt of this job updated: reported as that update, never written again."""
    message = json.loads(applied.payload)
    return PersonOutcome(
        diff,
        SUCCESS,
        properties_after=json_loads(message["properties"]),
        version_after=applied.version,
        already_done=True,
    )
