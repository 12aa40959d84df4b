"""`runner verify`'s classification (see `runner.commands.verify` for the classes and what they mean). Pure
functions, no I/O: `runner.jobs.verify` reads the job's outbox rows, ClickHouse and Postgres; the command
reports.

Per person the job updated, at the job's (latest) version for that person:
- `not_ingested` when ClickHouse has no version at or above the job's;
- `ok` when the recomputed diff no longer lists the person;
- `changed_since` when Postgres moved past the job's version, or ClickHouse holds the person deleted;
- `postgres_behind` when ClickHouse holds a higher version than the job wrote;
- `rule_artifact` when every remaining diff entry is one the original's per-key rules produce on their
  own (never for teams whose diff was built with `semantics: replay`);
- `differs` otherwise.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from runner.rules.merge import json_equal

SAMPLE = 20
CLASSES = ("ok", "changed_since", "postgres_behind", "rule_artifact", "not_ingested", "differs")

Key = tuple[int, UUID]  # (team id, person uuid)


@dataclass
class Verdict:
    counts: Counter[str] = field(default_factory=Counter)
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, klass: str, detail: dict[str, Any]) -> None:
        self.counts[klass] += 1
        bucket = self.samples.setdefault(klass, [])
        if klass != "ok" and len(bucket) < SAMPLE:
            bucket.append(detail)

    @property
    def failed(self) -> bool:
        return bool(self.counts["not_ingested"] or self.counts["differs"])


def latest_versions(outbox_rows: Iterable[Sequence[Any]]) -> dict[Key, int]:
    """The job's latest version per person, from outbox rows `(id, team_id, person_uuid, version)`."""
    latest: dict[Key, int] = {}
    for _, team, person, version in outbox_rows:
        key = (int(team), person)
        latest[key] = max(version, latest.get(key, 0))
    return latest


def artifact_suspects(
    latest: Mapping[Key, int],
    ch: Mapping[Key, tuple[Any, ...]],
    diff: Mapping[Key, Any],
    pg: Mapping[Key, int],
) -> list[Key]:
    """Persons that may turn out `rule_artifact` (still in the diff at exactly the job's version, with
    Postgres not past it): only theirs need the job's operations read."""
    return [k for k, v in latest.items() if k in diff and k in ch and ch[k][0] == v and pg.get(k, 0) <= v]


def decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def artifact_only(
    remaining: Mapping[str, Any], state_text: str, touched: Mapping[str, set[str]] | None
) -> bool:
    """Whether every remaining entry is one the diff rules produce on their own (`runner verify`)."""
    state = decoded(state_text or "{}")
    state = state if isinstance(state, dict) else {}
    touched = touched or {}
    for key, raw in remaining["set"].items():
        # A SET on a key the job filled with SET_ONCE (gotcha 4: the key was absent, so the rules took
        # the earlier SET_ONCE and dropped the later SET; now that the key exists the SET qualifies).
        filled_once = "set_once" in touched.get(key, set())
        if not filled_once and not (key in state and json_equal(decoded(raw), state[key])):
            return False
    return all(key in touched for key in [*remaining["set_once"], *remaining["unset"]])


def classify(
    key: Key,
    job_version: int,
    ch_state: tuple[int, int, str] | None,
    remaining: dict[str, Any] | None,
    pg_version: int | None,
    touched: Mapping[str, set[str]] | None,
    replay_teams: frozenset[int] = frozenset(),
) -> tuple[str, dict[str, Any]]:
    """One person's class and the detail reported for it. `ch_state`: ClickHouse's (version,
    is_deleted, properties) of its highest version, None when it has none; `remaining`: the person's
    entry in the recomputed diff (None: not listed); `touched`: the keys the job's diff touched, with
    their operations."""
    ch_version, ch_deleted, ch_properties = ch_state if ch_state is not None else (None, 0, "")
    detail = {
        "team_id": key[0],
        "person_uuid": str(key[1]),
        "job_version": job_version,
        "clickhouse_version": ch_version,
        "postgres_version": pg_version,
        "diff": remaining,
    }
    if ch_version is None or ch_version < job_version:
        klass = "not_ingested"
    elif remaining is None:
        klass = "ok"
    elif (pg_version or 0) > job_version or ch_deleted:
        klass = "changed_since"
    elif ch_version > job_version:
        klass = "postgres_behind"
    elif key[0] not in replay_teams and artifact_only(remaining, ch_properties, touched):
        klass = "rule_artifact"
    else:
        klass = "differs"
    return klass, detail
