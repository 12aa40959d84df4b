"""Who is in the data, pure and deterministic: persons spread over teams with their distinct_ids and
event times, merges (some chained) with the override rows they leave, and the fate of each person that
survives the merges.

Every draw comes from the generator's `people` random stream, in this order: persons, event times,
merges, fates (the generator draws the history rows from it last).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.local.seed.config import SeedConfig
from runner.local.seed.semantics import Operation

_MERGE_RATE = 0.07  # persons merged into another person of their team
_CHAIN_RATE = 0.2  # merge targets merged again later
_DELETED_OVERRIDE_RATE = 0.03  # live persons with a wrong override that was deleted
_FATE_DELETED = 0.006
_FATE_MISSING_IN_PG = 0.006
_FATE_NULL_VERSION = 0.006
_FATE_HISTORY = 0.05


@dataclass(slots=True)
class Person:
    idx: int
    team_id: int
    uuid: str
    distinct_ids: list[str]
    is_identified: bool
    timestamps: list[int] = field(default_factory=list)
    merged_into: Person | None = None
    merged_at: int = 0
    fate: str = "live"
    state: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    created_us: int = 0
    last_update_us: int = 0
    creation_ops: list[Operation] = field(default_factory=list)
    creation_ts: int = 0
    history: list[tuple[int, str, int]] = field(default_factory=list)  # (version, properties, at)

    def final(self) -> Person:
        person = self
        while person.merged_into is not None:
            person = person.merged_into
        return person

    def owner_at(self, ts: int) -> Person:
        """The person the distinct_ids of `self` belonged to at time `ts` (what ingestion wrote)."""
        person = self
        while person.merged_into is not None and ts >= person.merged_at:
            person = person.merged_into
        return person


def _allocate(total: int, weights: Sequence[float], minimum: int) -> list[int]:
    """Split `total` by `weights` (largest remainder), each share at least `minimum`."""
    rest = total - minimum * len(weights)
    scale = sum(weights)
    raw = [rest * w / scale for w in weights]
    shares = [int(r) for r in raw]
    left = rest - sum(shares)
    for i in sorted(range(len(weights)), key=lambda i: (shares[i] - raw[i], i))[:left]:
        shares[i] += 1
    return [minimum + s for s in shares]


def _uuid4(rng: random.Random) -> str:
    h = "%032x" % ((rng.getrandbits(128) & ~(0xF000 << 64) & ~(0xC << 60)) | (0x4000 << 64) | (0x8 << 60))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def create_persons(
    config: SeedConfig, team_ids: list[int], rng: random.Random
) -> tuple[list[Person], dict[int, list[Person]]]:
    """Persons, spread over teams with decreasing weights; also by team."""
    per_team = _allocate(config.persons, [1 / (i**0.7) for i in team_ids], 1)
    persons: list[Person] = []
    by_team: dict[int, list[Person]] = {}
    for team_id, size in zip(team_ids, per_team, strict=True):
        members = by_team.setdefault(team_id, [])
        for _ in range(size):
            idx = len(persons)
            identified = rng.random() < 0.45
            n_ids = 1 + int(rng.random() ** 1.8 * 4)
            dids = [_uuid4(rng)]
            if identified:
                dids.append(f"user{idx}@example.com")
            while len(dids) < n_ids:
                dids.append(_uuid4(rng))
            person = Person(idx, team_id, _uuid4(rng), dids, identified)
            persons.append(person)
            members.append(person)
    return persons, by_team


def spread_events(persons: list[Person], config: SeedConfig, rng: random.Random) -> None:
    """Event times per person: one each first (when there are enough), the rest skewed to heavy users."""
    start_us = config.start_us
    span = config.end_us - start_us
    n_persons = len(persons)
    per_person = [0] * n_persons
    order = list(range(n_persons))
    rng.shuffle(order)
    rand = rng.random
    if config.events >= n_persons:
        per_person = [1] * n_persons
        for _ in range(config.events - n_persons):
            per_person[order[int(n_persons * rand() ** 2)]] += 1
    else:
        for i in order[: config.events]:
            per_person[i] = 1
    for person, n in zip(persons, per_person, strict=True):
        if n:
            stamps = sorted([start_us + int(rand() * span) for _ in range(n)])
            person.timestamps = stamps
            person.created_us = stamps[0] - stamps[0] % 1000  # ClickHouse keeps milliseconds
        else:
            person.created_us = start_us + int(rand() * span) // 1000 * 1000


def merge(
    team_ids: list[int],
    by_team: dict[int, list[Person]],
    config: SeedConfig,
    rng: random.Random,
    counts: dict[str, int],
) -> list[str]:
    """Merges B -> A at a time after both exist; a fifth of the targets later -> C; and a few wrong
    overrides that were later deleted. Returns the override rows (TabSeparated lines, in version order).
    """
    start_us, end_us = config.start_us, config.end_us
    span = end_us - start_us
    override_rows: list[str] = []
    override_versions: dict[tuple[int, str], int] = {}

    def reassign(person: Person, distinct_id: str, target: Person, at: int) -> None:
        key = (person.team_id, distinct_id)
        version = override_versions.get(key, 0) + 1
        override_versions[key] = version
        override_rows.append(
            f"{person.team_id}\t{distinct_id}\t{target.uuid}\t0\t{version}\t{at // 1_000_000}\t"
            f"{len(override_rows)}\t0"
        )

    for team_id in team_ids:
        finals: list[Person] = []
        absorbed: dict[int, list[Person]] = {}
        for person in by_team[team_id]:
            if person.timestamps and finals and rng.random() < _MERGE_RATE:
                target = finals[int(rng.random() * len(finals))]
                low = max(person.created_us, target.created_us)
                person.merged_into = target
                person.merged_at = low + int(rng.random() * (end_us - low))
                absorbed.setdefault(target.idx, []).append(person)
                counts["merged_persons"] += 1
                for did in person.distinct_ids:
                    reassign(person, did, target, person.merged_at)
            elif person.timestamps:
                finals.append(person)
        chained = [t for t in finals if t.idx in absorbed and rng.random() < _CHAIN_RATE]
        chained_ids = {t.idx for t in chained}
        keep = [p for p in finals if p.idx not in chained_ids]
        for target in chained:
            if len(keep) < 1:
                break
            last = keep[int(rng.random() * len(keep))]
            low = max([target.created_us, last.created_us] + [s.merged_at for s in absorbed[target.idx]])
            target.merged_into = last
            target.merged_at = low + int(rng.random() * (end_us - low))
            counts["merged_persons"] += 1
            counts["chained_merges"] += 1
            for did in target.distinct_ids:
                reassign(target, did, last, target.merged_at)
            for source in absorbed[target.idx]:
                for did in source.distinct_ids:
                    reassign(source, did, last, target.merged_at)
                    counts["distinct_ids_overridden_twice"] += 1
        # A wrong override that was later deleted: resolution falls back to the event's person.
        for person in keep:
            if len(keep) > 1 and person.idx not in absorbed and rng.random() < _DELETED_OVERRIDE_RATE:
                did = person.distinct_ids[int(rng.random() * len(person.distinct_ids))]
                wrong = keep[int(rng.random() * len(keep))]
                if wrong is person:
                    continue
                at = start_us + int(rng.random() * span)
                gone = at + int(rng.random() * (end_us - at))
                reassign(person, did, wrong, at)
                key = (person.team_id, did)
                override_versions[key] += 1
                override_rows.append(
                    f"{person.team_id}\t{did}\t{wrong.uuid}\t1\t{override_versions[key]}\t{gone // 1_000_000}"
                    f"\t{len(override_rows)}\t0"
                )
                counts["deleted_overrides"] += 1
    return override_rows


def assign_fates(persons: list[Person], rng: random.Random) -> None:
    """Fates of the persons that survive merges: deleted, missing in Postgres, NULL version, history."""
    for person in persons:
        if person.merged_into is None:
            r = rng.random()
            if r < _FATE_DELETED:
                person.fate = "deleted"
            elif r < _FATE_DELETED + _FATE_MISSING_IN_PG:
                person.fate = "missing_in_pg"
            elif r < _FATE_DELETED + _FATE_MISSING_IN_PG + _FATE_NULL_VERSION:
                person.fate = "null_version"
            elif r < _FATE_DELETED + _FATE_MISSING_IN_PG + _FATE_NULL_VERSION + _FATE_HISTORY:
                person.fate = "history"
