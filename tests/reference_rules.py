"""An independent, pure-Python implementation of the reconciliation rules, used as the tests' oracle.

It follows the spec (`reference/reconciliation-semantics.md`) directly, event by event, without sharing
any code or SQL with the dbt models:

- R2.2 current ClickHouse state, R2.4 live overrides, R5.3 person resolution;
- R4 team discovery and filters;
- R5.4-R5.7 operations, values, blocklist, aggregation, with the tie-break the models document (R5.9);
- R6.4 diff rules, section 7 conflict filter;
- R8.8 windowed step 1 (affected persons bounded by the bug window);
- the diff table's batching and the summary counters of docs/contracts.md;
- recon's `semantics: replay` (per-key replay in time order, spec section 17 question 4), event by
  event, beside the mergeable per-window state the models keep for it.

Where the spec leaves a choice to ClickHouse it is modelled here explicitly:

- `ch_raw` reproduces ClickHouse's re-serialisation of a JSON value (the "raw text" that SET values are
  compared by and stored as): compact, members in document order, strings with ClickHouse's escapes,
  numbers printed as shortest round-trip doubles (`1.0` -> `1`, `1e21`, `1e-7`), integers beyond the
  64-bit ranges as quoted strings, which `unquote_big_integers` turns back into numbers as the models
  do (macros/recon_numbers.sql);
- `ch_uuid_key` is ClickHouse's UUID order (the last 8 bytes, then the first 8, unsigned), used for the
  tie-break and for the order of persons in batches;
- ties are broken by the greatest (SET) or least (SET_ONCE) `(timestamp, event uuid, position, value)`;
- `values_differ` is the SET comparison (R6.4 as recon decides it, see below).

SET comparison: a deliberate difference from the original, which compared raw texts in the single pass
(R6.4, R6.6) and decoded values with Python equality in windowed mode (R8.6, where `true == 1`). recon
compares JSON VALUES in both modes, with the runner's apply-time equality (`runner.rules.merge.json_equal`):
object member order and string escapes never matter, numbers compare by value (`1 == 1.0`), booleans
never equal numbers. Without it, a repaired person (whose state comes back from Postgres jsonb with its
keys reordered) would show the same difference forever. Quirks of the models' canonicalisation
(macros/recon_sql.sql, recon_json_differs), and how this oracle treats them:

- modelled here: a value with duplicate keys in any object is not canonicalised by ClickHouse (its JSON
  type refuses duplicate paths) and falls back to raw-text comparison, so it differs from every other
  text (`values_differ` does the same);
- not modelled (the models see these as EQUAL, this oracle as different; the generated test data never
  produces them): a dotted key equals the nested path (`{"a.b":1}` vs `{"a":{"b":1}}`), and a key
  colliding that way is a duplicate path (raw-text fallback); `[true,1]` vs `[1,true]` (booleans in an
  array that also holds numbers are read as numbers, only their count is checked); in an array mixing
  integers and floats, integers compare as doubles; values nested deeper than about 1000 levels or with
  numbers out of double range fall back to raw text.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from runner.rules.merge import json_equal

BLOCKLIST = frozenset(
    """
    $current_url $pathname $referring_domain $referrer
    $screen_height $screen_width $viewport_height $viewport_width
    $browser $browser_version $device_type $raw_user_agent $os $os_name $os_version
    $geoip_postal_code $geoip_time_zone $geoip_latitude $geoip_longitude $geoip_accuracy_radius
    $geoip_subdivision_1_code $geoip_subdivision_1_name $geoip_subdivision_2_code $geoip_subdivision_2_name
    $geoip_subdivision_3_code $geoip_subdivision_3_name
    $geoip_city_confidence $geoip_country_confidence $geoip_postal_code_confidence
    $geoip_subdivision_1_confidence $geoip_subdivision_2_confidence
    """.split()
)

SET, SET_ONCE, UNSET = "set", "set_once", "unset"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


# --- JSON as ClickHouse sees it ---------------------------------------------------------------------


class Pairs(list):
    """A JSON object as its members in document order (duplicates kept)."""


class _Invalid(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _Invalid(name)  # NaN / Infinity are not JSON


def parse_json(text: str) -> Any:
    """Strict JSON; objects become `Pairs`. Raises ValueError on anything that is not JSON."""
    try:
        return json.loads(text, object_pairs_hook=Pairs, parse_constant=_reject_constant)
    except (_Invalid, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc


def is_valid_json(text: str) -> bool:
    try:
        parse_json(text)
    except ValueError:
        return False
    return True


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _ch_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20 or char in "\u2028\u2029":
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _ch_double(value: float) -> str:
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    sign = "-" if value < 0 else ""
    digits_tuple = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digits_tuple.digits)).rstrip("0") or "0"
    # position of the decimal point relative to the digits: value = 0.DIGITS * 10**point
    point = len(digits_tuple.digits) + int(digits_tuple.exponent)
    count = len(digits)
    if count <= point <= 21:
        return sign + digits + "0" * (point - count)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    exponent = point - 1
    mantissa = digits[0] + ("." + digits[1:] if count > 1 else "")
    return f"{sign}{mantissa}e{exponent}"


def ch_raw(value: Any) -> str:
    """ClickHouse's raw JSON text of a parsed value (what JSONExtractRaw and friends return)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if -(2**63) <= value < 2**64:
            return str(value)
        return _ch_string(str(value))
    if isinstance(value, float):
        return _ch_double(value)
    if isinstance(value, str):
        return _ch_string(value)
    if isinstance(value, Pairs):
        return "{" + ",".join(f"{_ch_string(k)}:{ch_raw(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(ch_raw(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {value!r}")


_LONG_DIGITS = re.compile(r'"-?[0-9]{19,}"')
_ONE_LONG_DIGITS = re.compile(r'"(-?[0-9]{19,})"')


def unquote_big_integers(text: str, source: str) -> str:
    """macros/recon_numbers.sql: ClickHouse quotes integers beyond 64 bits; the models give them back
    as numbers, judged against the raw `source` text the value was extracted from."""
    if not _LONG_DIGITS.search(text):
        return text
    if not _LONG_DIGITS.search(source):
        return _ONE_LONG_DIGITS.sub(r"\1", text)
    whole = re.fullmatch(r'"(-?[0-9]{19,})"', text)
    if whole and re.search(r"[\[:,]\s*" + whole.group(1) + r"\s*[,}\]]", source):
        return whole.group(1)
    return text


def _has_duplicate_keys(value: Any) -> bool:
    if isinstance(value, Pairs):
        keys = [k for k, _ in value]
        return len(set(keys)) != len(keys) or any(_has_duplicate_keys(v) for _, v in value)
    if isinstance(value, list):
        return any(_has_duplicate_keys(v) for v in value)
    return False


def _plain(value: Any) -> Any:
    """A parsed value with `Pairs` turned into dicts (only called without duplicate keys)."""
    if isinstance(value, Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def values_differ(left: str, right: str) -> bool:
    """The SET comparison of R6.4 as recon decides it (module docstring): different JSON values, by
    `runner.rules.merge.json_equal`; a value with duplicate keys compares by its raw text."""
    if left == right:
        return False
    a, b = parse_json(left), parse_json(right)
    if _has_duplicate_keys(a) or _has_duplicate_keys(b):
        return True
    return not json_equal(_plain(a), _plain(b))


def first_member(obj: Any, key: str) -> tuple[bool, Any]:
    """Top-level lookup as ClickHouse does it: the first member with that key."""
    if isinstance(obj, Pairs):
        for k, v in obj:
            if k == key:
                return True, v
    return False, None


def ch_uuid_key(value: UUID) -> tuple[int, int]:
    """ClickHouse orders UUIDs by their last 8 bytes, then their first 8 (both unsigned)."""
    return (value.int & 0xFFFFFFFFFFFFFFFF, value.int >> 64)


# --- inputs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    uuid: UUID
    team_id: int
    distinct_id: str
    person_id: UUID
    timestamp: datetime
    properties: str


@dataclass(frozen=True)
class PersonRow:
    id: UUID
    team_id: int
    properties: str
    is_deleted: int
    version: int
    timestamp: datetime  # `_timestamp`
    offset: int  # `_offset`


@dataclass(frozen=True)
class OverrideRow:
    team_id: int
    distinct_id: str
    person_id: UUID
    is_deleted: int
    version: int
    timestamp: datetime
    offset: int
    partition: int


@dataclass(frozen=True)
class Config:
    bug_window_start: datetime
    bug_window_end: datetime
    now: datetime
    window_seconds: int = 0
    person_batch_size: int = 10_000
    team_ids: Sequence[int] = ()
    min_team_id: int | None = None
    max_team_id: int | None = None
    exclude_team_ids: Sequence[int] = ()
    semantics: str = "original"  # or "replay" (section "replay semantics" below)

    @property
    def mode(self) -> str:
        return "windowed" if self.window_seconds > 0 else "single_pass"

    def selects_team(self, team_id: int) -> bool:
        """R4.2."""
        if self.team_ids and team_id not in self.team_ids:
            return False
        if self.min_team_id is not None and team_id < self.min_team_id:
            return False
        if self.max_team_id is not None and team_id > self.max_team_id:
            return False
        return not (self.exclude_team_ids and team_id in self.exclude_team_ids)


def utc(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


# --- extraction (R5) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    kind: str
    key: str
    value: str | None  # raw JSON text; None for UNSET
    timestamp: datetime
    event_uuid: UUID
    position: int  # 1-based position of the member inside its object / array


@dataclass
class EventReading:
    has_operation_keys: bool  # R4.1
    malformed: bool  # mentions $set/$unset but is not JSON
    operations: list[Operation]


def _unset_key(element: Any) -> str:
    if isinstance(element, str):
        return element
    if element is None or isinstance(element, (list, Pairs)):
        return ""
    return ch_raw(element)  # numbers and booleans give their text


def read_event(event: Event) -> EventReading:
    """R5.4-R5.6 for one event."""
    text = event.properties
    mentions = "$set" in text or "$unset" in text
    try:
        document = parse_json(text)
    except ValueError:
        return EventReading(False, mentions, [])
    operations: list[Operation] = []
    present = False
    for kind, name in ((SET, "$set"), (SET_ONCE, "$set_once")):
        found, payload = first_member(document, name)
        present = present or found
        if found and isinstance(payload, Pairs):
            for position, (key, value) in enumerate(payload, start=1):
                if value is None or key in BLOCKLIST:
                    continue
                raw = unquote_big_integers(ch_raw(value), text)
                operations.append(Operation(kind, key, raw, event.timestamp, event.uuid, position))
    found, payload = first_member(document, "$unset")
    present = present or found
    if found and isinstance(payload, list) and not isinstance(payload, Pairs):
        for position, element in enumerate(payload, start=1):
            key = _unset_key(element)
            if key in BLOCKLIST:
                continue
            operations.append(Operation(UNSET, key, None, event.timestamp, event.uuid, position))
    return EventReading(present, False, operations)


def live_overrides(rows: Iterable[OverrideRow]) -> dict[tuple[int, str], UUID]:
    """R2.4 (ties on version broken by _timestamp, _offset, _partition, is_deleted, person uuid)."""
    latest: dict[tuple[int, str], tuple] = {}
    for row in rows:
        rank = (
            row.version,
            row.timestamp,
            row.offset,
            row.partition,
            row.is_deleted,
            ch_uuid_key(row.person_id),
        )
        slot = (row.team_id, row.distinct_id)
        if slot not in latest or rank > latest[slot][0]:
            latest[slot] = (rank, row)
    return {slot: row.person_id for slot, (_, row) in latest.items() if row.is_deleted == 0}


@dataclass(frozen=True)
class State:
    version: int
    keys: dict[str, str]  # key -> raw value, first occurrence wins (R6.3)


def current_states(rows: Iterable[PersonRow]) -> dict[tuple[int, UUID], State]:
    """R2.2: highest version per person, tombstones dropped (ties: _timestamp, _offset, is_deleted, text)."""
    latest: dict[tuple[int, UUID], tuple] = {}
    for row in rows:
        rank = (row.version, row.timestamp, row.offset, row.is_deleted, row.properties.encode())
        slot = (row.team_id, row.id)
        if slot not in latest or rank > latest[slot][0]:
            latest[slot] = (rank, row)
    states = {}
    for slot, (_, row) in latest.items():
        if row.is_deleted != 0:
            continue
        keys: dict[str, str] = {}
        try:
            document = parse_json(row.properties)
        except ValueError:
            document = None
        if isinstance(document, Pairs):
            for key, value in document:
                keys.setdefault(key, unquote_big_integers(ch_raw(value), row.properties))
        states[slot] = State(row.version, keys)
    return states


# --- aggregation (R5.7, R5.9) and decisions (R6.4, section 7) ---------------------------------------


@dataclass
class KeyOps:
    last_set: tuple | None = None  # (timestamp, uuid key, position, value)
    first_set_once: tuple | None = None
    last_unset: datetime | None = None

    def add(self, op: Operation) -> None:
        if op.kind == UNSET:
            if self.last_unset is None or op.timestamp > self.last_unset:
                self.last_unset = op.timestamp
            return
        rank = (op.timestamp, ch_uuid_key(op.event_uuid), op.position, op.value.encode())
        if op.kind == SET and (self.last_set is None or rank > self.last_set):
            self.last_set = rank
        if op.kind == SET_ONCE and (self.first_set_once is None or rank < self.first_set_once):
            self.first_set_once = rank


@dataclass
class Decision:
    in_set: bool
    in_set_once: bool
    in_unset: bool
    keep_set: bool
    keep_set_once: bool
    keep_unset: bool


def decide(ops: KeyOps, key: str, state: State) -> Decision:
    present = key in state.keys
    in_set = ops.last_set is not None and present and values_differ(ops.last_set[3].decode(), state.keys[key])
    in_set_once = ops.first_set_once is not None and not present
    in_unset = ops.last_unset is not None and present
    keep_set, keep_set_once, keep_unset = in_set, in_set_once, in_unset
    # R7.1: SET vs UNSET; the later wins, UNSET on ties
    if in_unset and in_set:
        if ops.last_set[0] > ops.last_unset:
            keep_unset = False
        else:
            keep_set = False
    # R7.2: SET_ONCE vs the original UNSET
    if in_unset and in_set_once:
        if ops.first_set_once[0] > ops.last_unset:
            keep_unset = False
        else:
            keep_set_once = False
    return Decision(in_set, in_set_once, in_unset, keep_set, keep_set_once, keep_unset)


# --- replay semantics (recon's `semantics: replay`, spec section 17 question 4) ---------------------
#
# Per person and key, the operations since W0 are applied in replay order to the current ClickHouse
# state: SET overwrites (absent keys included), SET_ONCE sets only when the key is absent at that point,
# UNSET removes. Replay order: timestamp, then kind (SET_ONCE, SET, UNSET: the order in which PostHog's
# ingestion applies one event's `$set_once`, `$set` and `$unset`, and R7's "UNSET wins ties"), then
# R5.9's event uuid (ClickHouse order), position and value.
#
# `replay_key` below is the per-event definition (the oracle). `ReplayState` is the mergeable state
# the models keep per window instead; `test_reference_rules.py` proves that both give the same result.

REPLAY_RANK = {SET_ONCE: 0, SET: 1, UNSET: 2}


def replay_order(op: Operation) -> tuple:
    return (
        op.timestamp,
        REPLAY_RANK[op.kind],
        ch_uuid_key(op.event_uuid),
        op.position,
        (op.value or "").encode(),
    )


def replay_key(ops: Iterable[Operation], before: str | None) -> tuple[str | None, Operation | None]:
    """Per-event replay of one key's operations onto `before` (raw value, None = absent): the final
    value and the operation that produced it (None when no operation changed the starting state)."""
    value, source = before, None
    for op in sorted(ops, key=replay_order):
        if op.kind == SET:
            value, source = op.value, op
        elif op.kind == SET_ONCE:
            if value is None:
                value, source = op.value, op
        else:
            value, source = None, op
    return value, source


@dataclass(frozen=True)
class ReplayWrite:
    """The latest SET or UNSET of a part, in replay order (`rank` 1 = SET, 2 = UNSET)."""

    timestamp: datetime
    rank: int
    uuid: tuple[int, int]
    position: int
    value: str  # "" for UNSET

    def order(self) -> tuple:
        return (self.timestamp, self.rank, self.uuid, self.position, self.value.encode())


@dataclass(frozen=True)
class ReplayOnce:
    """A SET_ONCE, ordered as R5.9 orders SET_ONCEs (they all share the replay rank 0)."""

    timestamp: datetime
    uuid: tuple[int, int]
    position: int
    value: str

    def order(self) -> tuple:
        return (self.timestamp, self.uuid, self.position, self.value.encode())


def _earliest(a: ReplayOnce | None, b: ReplayOnce | None) -> ReplayOnce | None:
    if a is None or b is None:
        return a or b
    return a if a.order() <= b.order() else b


@dataclass
class ReplayState:
    """What one part (a window, or a slice of one) keeps per (person, key) for the replay result:

    - `last_write`: its latest SET or UNSET (kind, value, tie-break);
    - `first_once`: its first SET_ONCE overall;
    - `first_once_after`: its first SET_ONCE after `last_write` (None when it has no write: then
      `first_once` plays that part).

    A SET_ONCE at the timestamp of a write comes before it (rank 0), so "after" means a strictly
    later timestamp."""

    last_write: ReplayWrite | None = None
    first_once: ReplayOnce | None = None
    first_once_after: ReplayOnce | None = None

    @classmethod
    def of(cls, ops: Iterable[Operation]) -> ReplayState:
        state = cls()
        ordered = sorted(ops, key=replay_order)
        for op in ordered:
            if op.kind == SET_ONCE:
                once = ReplayOnce(op.timestamp, ch_uuid_key(op.event_uuid), op.position, op.value or "")
                state.first_once = _earliest(state.first_once, once)
                if state.last_write is not None:
                    state.first_once_after = _earliest(state.first_once_after, once)
            else:
                state.last_write = ReplayWrite(
                    op.timestamp,
                    REPLAY_RANK[op.kind],
                    ch_uuid_key(op.event_uuid),
                    op.position,
                    op.value or "",
                )
                state.first_once_after = None
        return state

    def then(self, later: ReplayState) -> ReplayState:
        """Merge with the state of a part whose operations all come later in replay order."""
        if later.last_write is not None:
            return ReplayState(
                later.last_write, _earliest(self.first_once, later.first_once), later.first_once_after
            )
        after = None
        if self.last_write is not None:
            after = self.first_once_after or later.first_once
        return ReplayState(self.last_write, _earliest(self.first_once, later.first_once), after)

    def result(self, before: str | None) -> tuple[str | None, str | None, datetime | None]:
        """(final raw value or None, kind of the operation it comes from, its timestamp); kind and
        timestamp are None when the starting state is kept."""
        write = self.last_write
        if write is None:
            if before is not None or self.first_once is None:
                return before, None, None
            return self.first_once.value, SET_ONCE, self.first_once.timestamp
        if write.rank == REPLAY_RANK[SET]:
            return write.value, SET, write.timestamp
        if self.first_once_after is not None:
            return self.first_once_after.value, SET_ONCE, self.first_once_after.timestamp
        return None, UNSET, write.timestamp


def replay_from_parts(parts: Iterable[ReplayState]) -> ReplayState:
    """The models' order-free read of many parts (macros: max / min / candidates filtered by the
    latest write): exact when the parts are ordered in time (disjoint windows and slices) or are
    copies or time-prefixes of one another (a slice inserted twice), which is how the models build
    them. `then` is the ordered merge this must equal."""
    parts = list(parts)
    writes = [p.last_write for p in parts if p.last_write is not None]
    last = max(writes, key=ReplayWrite.order) if writes else None
    first = None
    for part in parts:
        first = _earliest(first, part.first_once)
    after = None
    if last is not None:
        for part in parts:
            candidate = part.first_once_after if part.last_write is not None else part.first_once
            if candidate is not None and candidate.timestamp > last.timestamp:
                after = _earliest(after, candidate)
    return ReplayState(last, first, after)


def replay_entry(
    key: str, final: str | None, kind: str | None, at: datetime | None, state: State
) -> tuple[str, str, datetime] | None:
    """The diff entry of one replayed key: (kind, value, timestamp) or None when nothing changes.
    A value that comes from a SET_ONCE goes to the SET map when the key is present now (it must
    overwrite), to the SET_ONCE map when absent."""
    current = state.keys.get(key)
    if kind is None or at is None:
        return None
    if final is None:
        return (UNSET, "", at) if current is not None else None
    if current is not None and not values_differ(final, current):
        return None
    if kind == SET_ONCE and current is None:
        return (SET_ONCE, final, at)
    return (SET, final, at)


def replay_changes(key: str, ops: list[Operation], state: State) -> tuple[str, str, datetime] | None:
    """The replay diff entry of one key, by per-event replay (the oracle's own path)."""
    if not ops:
        return None
    final, source = replay_key(ops, state.keys.get(key))
    if source is None:
        return None
    return replay_entry(key, final, source.kind, source.timestamp, state)


# --- the whole computation --------------------------------------------------------------------------


@dataclass
class DiffRow:
    team_id: int
    batch_index: int
    person_id: UUID
    baseline_version: int
    set_entries: list[tuple[str, str, datetime]]
    set_once_entries: list[tuple[str, str, datetime]]
    unset_entries: list[tuple[str, datetime]]


@dataclass
class SummaryRow:
    team_id: int
    events_scanned: int
    operations: int
    malformed_events: int
    persons_affected: int
    persons_with_diff: int
    batches: int


@dataclass
class Result:
    teams: list[int]
    diffs: dict[tuple[int, UUID], DiffRow] = field(default_factory=dict)
    summaries: dict[int, SummaryRow] = field(default_factory=dict)
    affected: set[tuple[int, UUID]] = field(default_factory=set)


def compute(
    config: Config,
    events: Iterable[Event],
    persons: Iterable[PersonRow],
    overrides: Iterable[OverrideRow],
) -> Result:
    w0, w1, now = config.bug_window_start, config.bug_window_end, config.now
    overrides_by_id = live_overrides(o for o in overrides if config.selects_team(o.team_id))
    states = current_states(p for p in persons if config.selects_team(p.team_id))

    counters: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])  # events, operations, malformed
    discovered: set[int] = set()
    all_ops: dict[tuple[int, UUID], dict[str, KeyOps]] = defaultdict(lambda: defaultdict(KeyOps))
    window_ops: dict[tuple[int, UUID], dict[str, KeyOps]] = defaultdict(lambda: defaultdict(KeyOps))
    # replay: every operation, per person and key (whether it is inside [W0, W1) is its timestamp)
    op_lists: dict[tuple[int, UUID], dict[str, list[Operation]]] = defaultdict(lambda: defaultdict(list))

    for event in events:
        if not config.selects_team(event.team_id) or not (w0 <= event.timestamp < now):
            continue
        reading = read_event(event)
        counter = counters[event.team_id]
        counter[0] += 1
        counter[1] += len(reading.operations)
        counter[2] += int(reading.malformed)
        if reading.has_operation_keys and event.timestamp < w1:
            discovered.add(event.team_id)
        # R5.3: an override row with an empty distinct_id is indistinguishable from no match
        person = event.person_id
        if event.distinct_id != "" and (event.team_id, event.distinct_id) in overrides_by_id:
            person = overrides_by_id[(event.team_id, event.distinct_id)]
        for op in reading.operations:
            all_ops[(event.team_id, person)][op.key].add(op)
            op_lists[(event.team_id, person)][op.key].append(op)
            if event.timestamp < w1:
                window_ops[(event.team_id, person)][op.key].add(op)

    result = Result(teams=sorted(discovered))

    # affected persons: windowed R8.8 (a diff from [W0, W1) alone), single pass R6.1-R6.2
    for slot in all_ops:
        team_id, _ = slot
        if team_id not in discovered or slot not in states:
            continue
        if config.mode == "windowed" and config.semantics == "replay":
            if any(
                replay_changes(key, [op for op in ops if op.timestamp < w1], states[slot]) is not None
                for key, ops in op_lists[slot].items()
            ):
                result.affected.add(slot)
        elif config.mode == "windowed":
            bounded = window_ops.get(slot, {})
            if any(
                d.in_set or d.in_set_once or d.in_unset
                for d in (decide(ops, key, states[slot]) for key, ops in bounded.items())
            ):
                result.affected.add(slot)
        else:
            result.affected.add(slot)

    rows: dict[int, list[DiffRow]] = defaultdict(list)
    for slot in result.affected:
        state = states[slot]
        sets, set_onces, unsets = [], [], []
        if config.semantics == "replay":
            for key, key_ops in op_lists[slot].items():
                entry = replay_changes(key, key_ops, state)
                if entry is None:
                    continue
                kind, value, at = entry
                if kind == UNSET:
                    unsets.append((key, at))
                else:
                    (sets if kind == SET else set_onces).append((key, value, at))
        else:
            for key, ops in all_ops[slot].items():
                d = decide(ops, key, state)
                if d.keep_set:
                    sets.append((key, ops.last_set[3].decode(), ops.last_set[0]))
                if d.keep_set_once:
                    set_onces.append((key, ops.first_set_once[3].decode(), ops.first_set_once[0]))
                if d.keep_unset:
                    unsets.append((key, ops.last_unset))
        if sets or set_onces or unsets:
            key_order = lambda entry: entry[0].encode()  # noqa: E731
            rows[slot[0]].append(
                DiffRow(
                    slot[0],
                    0,
                    slot[1],
                    state.version,
                    sorted(sets, key=key_order),
                    sorted(set_onces, key=key_order),
                    sorted(unsets, key=key_order),
                )
            )
    for team_id, team_rows in rows.items():
        team_rows.sort(key=lambda r: ch_uuid_key(r.person_id))
        for index, row in enumerate(team_rows):
            row.batch_index = index // config.person_batch_size
            result.diffs[(team_id, row.person_id)] = row

    for team_id in result.teams:
        events_scanned, operations, malformed = counters[team_id]
        team_rows = rows.get(team_id, [])
        result.summaries[team_id] = SummaryRow(
            team_id=team_id,
            events_scanned=events_scanned,
            operations=operations,
            malformed_events=malformed,
            persons_affected=sum(1 for t, _ in result.affected if t == team_id),
            persons_with_diff=len(team_rows),
            batches=(max(r.batch_index for r in team_rows) + 1) if team_rows else 0,
        )
    return result
