"""The generator, pure and deterministic: `generate(SeedConfig) -> Dataset`, every row of the demo data.

It draws the persons, their merges and fates (`population`), then walks every resolved person's events in
timestamp order, writing each event and replaying its operations into the true state and, unless the
bug lost them, the stored state; last it writes the person rows for ClickHouse and Postgres. The data
model is described in the package docstring (`runner.local.seed`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from runner.local.seed.config import EPOCH, SeedConfig
from runner.local.seed.event_properties import (
    ELEMENTS_CHAIN,
    OPS_EVENTS,
    ORDINARY_EVENTS,
    PREFIXES,
    SUFFIXES,
    malform,
    operations_text,
)
from runner.local.seed.population import Person, assign_fates, create_persons, merge, spread_events
from runner.local.seed.semantics import UNSET, Operation, apply_operations

# Rates of the generator (per event); the per-person and per-team ones are in `population`.
_OPS_RATE = 0.24  # events carrying property operations
_FIRST_EVENT_OPS_RATE = 0.75  # a person's first event (identify / signup)
_MALFORMED_RATE = 0.004
_DELETE_VERSION_BUMP = 100  # PostHog deletes a person with version + 100

EVENT_COLUMNS = (
    "uuid",
    "event",
    "properties",
    "timestamp",
    "team_id",
    "distinct_id",
    "elements_chain",
    "created_at",
    "person_id",
    "person_created_at",
    "person_mode",
    "inserted_at",
    "_timestamp",
    "_offset",
)
PERSON_COLUMNS = (
    "id",
    "created_at",
    "team_id",
    "properties",
    "is_identified",
    "is_deleted",
    "version",
    "last_seen_at",
    "_timestamp",
    "_offset",
)
OVERRIDE_COLUMNS = (
    "team_id",
    "distinct_id",
    "person_id",
    "is_deleted",
    "version",
    "_timestamp",
    "_offset",
    "_partition",
)
PG_PERSON_COLUMNS = (
    "id",
    "uuid",
    "team_id",
    "properties",
    "properties_last_updated_at",
    "properties_last_operation",
    "version",
    "is_identified",
    "created_at",
)


_MASK62 = (1 << 62) - 1
_BLOCK_LINES = 20_000

# The counts a Dataset reports, in this order.
_COUNT_KEYS = (
    "events",
    "operation_events",
    "window_events",
    "window_operation_events",
    "lost_events",
    "malformed_events",
    "null_values",
    "blocklisted_operations",
    "non_object_operations",
    "unset_objects",
    "persons",
    "merged_persons",
    "chained_merges",
    "live_persons",
    "deleted_persons",
    "missing_in_postgres",
    "null_version_in_postgres",
    "history_rows",
    "overrides",
    "deleted_overrides",
    "distinct_ids_overridden_twice",
    "clickhouse_person_rows",
    "postgres_persons",
)


@dataclass
class Dataset:
    """Rows ready for writing (TSV text for ClickHouse, tuples for Postgres) plus counts."""

    config: SeedConfig
    team_ids: list[int]
    quiet_team_id: int | None
    events_tsv: list[bytes]  # blocks of TabSeparated lines
    persons_tsv: list[bytes]
    overrides_tsv: list[bytes]
    pg_rows: list[tuple]
    counts: dict[str, int]


def _tsv(text: str) -> str:
    # JSON escapes control characters, so only the backslash needs escaping for TabSeparated.
    return text.replace("\\", "\\\\") if "\\" in text else text


def _encode(lines: list[str]) -> list[bytes]:
    return [("\n".join(lines) + "\n").encode()] if lines else []


def _join(lines: list[bytes]) -> list[bytes]:
    return [b"".join(lines)] if lines else []


def generate(config: SeedConfig, event_sink: Callable[[bytes], None] | None = None) -> Dataset:
    """Build the whole dataset in memory, deterministically from `config` (no I/O).

    With `event_sink`, the blocks of event lines go to it as they are made instead of into the dataset.
    """
    config.validate()
    seed = config.seed
    rng_people = random.Random(f"recon-seed/{seed}/people")
    rng_events = random.Random(f"recon-seed/{seed}/events")
    team_ids = list(range(1, config.teams + 1))
    quiet_team = team_ids[-1] if config.teams >= 3 else None
    counts: dict[str, int] = dict.fromkeys(_COUNT_KEYS, 0)

    persons, by_team = create_persons(config, team_ids, rng_people)
    counts["persons"] = len(persons)
    spread_events(persons, config, rng_people)
    override_rows = merge(team_ids, by_team, config, rng_people, counts)
    counts["overrides"] = len(override_rows)
    assign_fates(persons, rng_people)
    blocks = _events(persons, config, quiet_team, rng_events, counts, event_sink)
    person_rows, pg_rows = _person_rows(persons, config, rng_people, counts)

    return Dataset(
        config=config,
        team_ids=team_ids,
        quiet_team_id=quiet_team,
        events_tsv=blocks,
        persons_tsv=_encode(person_rows),
        overrides_tsv=_encode(override_rows),
        pg_rows=pg_rows,
        counts=counts,
    )


def _events(
    persons: list[Person],
    config: SeedConfig,
    quiet_team: int | None,
    rng: random.Random,
    counts: dict[str, int],
    event_sink: Callable[[bytes], None] | None,
) -> list[bytes]:
    """Events, group by group (a final person and everyone merged into it), in timestamp order.

    Replays each event's operations into the final person's state (the truth) and, unless the bug lost
    them, into the state ingestion wrote. Returns the blocks of event lines (none with `event_sink`).
    """
    w0, w1 = config.window_us
    groups: dict[int, list[Person]] = {}
    for person in persons:
        groups.setdefault(person.final().idx, []).append(person)
    ev_rand = rng.random
    ev_bits = rng.getrandbits
    # Lines are encoded one by one: a joined str with one non-ASCII character would be 4 bytes per character.
    lines: list[bytes] = []
    blocks: list[bytes] = []
    append = lines.append
    offset = window_events = operation_events = window_operation_events = lost_events = malformed_events = 0
    lost_fraction = config.lost_fraction
    n_ordinary, n_ops, n_prefixes, n_suffixes = (
        len(ORDINARY_EVENTS),
        len(OPS_EVENTS),
        len(PREFIXES),
        len(SUFFIXES),
    )
    for final_idx in sorted(groups):
        final = persons[final_idx]
        members_ = groups[final_idx]
        if len(members_) == 1:
            timeline = [(ts, final) for ts in final.timestamps]
        else:
            timeline = sorted(
                ((ts, m) for m in members_ for ts in m.timestamps), key=lambda pair: (pair[0], pair[1].idx)
            )
        quiet = final.team_id == quiet_team
        previous = -1
        seen_members: set[int] = set()
        for ts, member in timeline:
            if ts <= previous:
                ts = previous + 1  # distinct timestamps per resolved person: the replay has one order
            previous = ts
            dids = member.distinct_ids
            first_of_member = member.idx not in seen_members
            if first_of_member:
                seen_members.add(member.idx)
                distinct_id = dids[0]
            else:
                distinct_id = dids[int(ev_rand() * len(dids))]
            ingested = member if member.merged_into is None else member.owner_at(ts)
            in_window = w0 <= ts < w1
            window_events += in_window
            r = ev_bits(30)
            props = (
                f'{PREFIXES[r % n_prefixes]}"$session_id":"s-{member.idx:x}-{ts // 3_600_000_000:x}",'
                f"{SUFFIXES[(r >> 10) % n_suffixes]}{(r >> 20) % 500}}}"
            )
            ops: list[Operation] = []
            malformed = ev_rand() < _MALFORMED_RATE
            if (ev_rand() < (_FIRST_EVENT_OPS_RATE if first_of_member else _OPS_RATE) or malformed) and not (
                quiet and in_window
            ):
                fragment, ops = operations_text(rng, member.idx, counts)
                props = f"{props[:-1]},{fragment}}}"
                event = OPS_EVENTS[int(ev_rand() * n_ops)]
            else:
                event = ORDINARY_EVENTS[int(ev_rand() * n_ordinary)]
            if malformed:
                props = malform(rng, props)
                ops = []
                malformed_events += 1
            if ops:
                operation_events += 1
                lost = False
                if in_window:
                    window_operation_events += 1
                    if ev_rand() < lost_fraction:
                        lost = True
                        lost_events += 1
                if not lost:
                    if apply_operations(final.state, ops):
                        final.last_update_us = ts
                        if first_of_member and member is final:
                            final.creation_ops = ops
                            final.creation_ts = ts
                        elif ts >= final.created_us:
                            final.version += 1
                            if final.fate == "history":
                                final.history.append((final.version, json.dumps(final.state), ts))
                    if ingested is not final and apply_operations(ingested.state, ops):
                        ingested.version += 1
                        ingested.last_update_us = ts
            if "\\" in props:
                props = props.replace("\\", "\\\\")  # TabSeparated escaping (JSON escapes tabs and newlines)
            created_at = ts + 200_000 + ts % 2_800_000  # ingestion lag, deterministic
            bits = ev_bits(74)  # UUIDv7 like PostHog's: milliseconds, version 7, random, variant 2, random
            append(
                f"{(ts // 1000) << 80 | 0x7 << 76 | (bits >> 62) << 64 | 0x2 << 62 | bits & _MASK62:032x}\t"
                f"{event}\t"
                f"{props}\t{ts}\t{member.team_id}\t{distinct_id}\t"
                f"{ELEMENTS_CHAIN if event == '$autocapture' else ''}\t{created_at}\t{ingested.uuid}\t"
                f"{ingested.created_us // 1000}\tfull\t{created_at + 1_000_000}\t{created_at // 1_000_000}\t"
                f"{offset}\n".encode()
            )
            offset += 1
            if len(lines) >= _BLOCK_LINES:
                for block in _join(lines):
                    if event_sink is None:
                        blocks.append(block)
                    else:
                        event_sink(block)
                lines.clear()
    for block in _join(lines):
        if event_sink is None:
            blocks.append(block)
        else:
            event_sink(block)
    lines.clear()
    counts.update(
        window_events=window_events,
        operation_events=operation_events,
        window_operation_events=window_operation_events,
        lost_events=lost_events,
        malformed_events=malformed_events,
    )
    counts["events"] = offset
    return blocks


def _person_rows(
    persons: list[Person], config: SeedConfig, rng: random.Random, counts: dict[str, int]
) -> tuple[list[str], list[tuple]]:
    """Person rows: ClickHouse (with history and tombstones) and Postgres (the same current state)."""
    end_us = config.end_us
    person_rows: list[str] = []
    pg_rows: list[tuple] = []

    def ch_row(person: Person, properties: str, version: int, deleted: int, at: int) -> None:
        person_rows.append(
            f"{person.uuid}\t{person.created_us // 1000}\t{person.team_id}\t{_tsv(properties)}\t"
            f"{int(person.is_identified)}\t{deleted}\t{version}\t\\N\t"
            f"{max(at, person.created_us) // 1_000_000}\t"
            f"{len(person_rows)}"
        )

    for person in persons:
        properties = json.dumps(person.state)
        if person.merged_into is not None:
            ch_row(person, properties, person.version, 0, person.last_update_us)
            ch_row(person, properties, person.version + _DELETE_VERSION_BUMP, 1, person.merged_at)
            continue
        if person.fate == "history" and len(person.history) > 1:
            version, old, at = person.history[int(rng.random() * (len(person.history) - 1))]
            ch_row(person, old, version, 0, at)
            counts["history_rows"] += 1
        ch_row(person, properties, person.version, 0, person.last_update_us)
        if person.fate == "deleted":
            ch_row(person, properties, person.version + _DELETE_VERSION_BUMP, 1, end_us - 1)
            counts["deleted_persons"] += 1
            if person.idx % 2:
                continue
        if person.fate == "missing_in_pg":
            counts["missing_in_postgres"] += 1
            continue
        if person.fate != "deleted":
            counts["live_persons"] += 1
        updated_at: dict[str, str] = {}
        operation: dict[str, str] = {}
        if person.creation_ops:
            stamp = (EPOCH + timedelta(microseconds=person.creation_ts)).isoformat()
            for kind, name, _ in person.creation_ops:
                if kind != UNSET:
                    updated_at[name] = stamp
                    operation[name] = kind
        version_pg: int | None = person.version
        if person.fate == "null_version":
            version_pg = None
            counts["null_version_in_postgres"] += 1
        pg_rows.append(
            (
                len(pg_rows) + 1,
                person.uuid,
                person.team_id,
                properties,
                json.dumps(updated_at),
                json.dumps(operation) if operation else None,
                version_pg,
                person.is_identified,
                EPOCH + timedelta(microseconds=person.created_us),
            )
        )
    counts["clickhouse_person_rows"] = len(person_rows)
    counts["postgres_persons"] = len(pg_rows)
    return person_rows, pg_rows
