"""Business rules of applying one person's diff (spec §7, R9.4–R9.9, §2.7). Pure functions, no I/O.

A diff's timestamps are carried as the text R9.7 writes into `properties_last_updated_at`
(`2026-01-07T14:52:00.123456+00:00`, no fraction when it is zero, always UTC): every consumer of a
timestamp wants that text, and for this fixed format the order of the texts is the order of the times
(at equal seconds `+` sorts before `.`, i.e. a zero fraction before a non-zero one), which is all the
conflict filter needs.

The merges return the new properties in full and the change to the two metadata maps as a delta (keys
to set, keys to remove): applying the delta is `(old - removed) || set`, which Postgres does in the same
statement as the update (`runner.stores.persons`), so the metadata maps never travel through Python.
"""

from __future__ import annotations

import json
import math
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring_ascii
from typing import Any
from uuid import UUID

import orjson

SET = "set"
SET_ONCE = "set_once"
UNSET = "unset"

JsonMap = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PersonDiff:
    """One person's diff: SET/SET_ONCE map key -> (decoded value, timestamp); UNSET key -> timestamp.
    Timestamps are R9.7 texts (see the module's docstring)."""

    team_id: int
    person_uuid: UUID
    baseline_version: int
    set: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    set_once: Mapping[str, tuple[Any, str]] = field(default_factory=dict)
    unset: Mapping[str, str] = field(default_factory=dict)
    batch_index: int = 0
    # R9.9's pending_operations as JSON text when the reader built it (see pending_operations_json).
    pending_operations: str | None = None
    # The SET and SET_ONCE maps as JSON objects of ClickHouse's value texts: what the write sends to
    # Postgres, so a value reaches it exactly as ClickHouse wrote it (see `value_maps`).
    set_json: str | None = None
    set_once_json: str | None = None
    # Why Postgres cannot take this diff (a NUL character, a lone surrogate, invalid JSON), if so.
    invalid: str | None = None
    # The set-based write's staged row (COPY text, without its position) as ClickHouse built it from
    # the same entries (`runner.stores.diffs`); None when built otherwise or changed since (the
    # conflict filter): then it is built from the decoded entries (`runner.stores.apply_sets`).
    stage_line: str | None = None
    # ClickHouse found no key both set (or set once) and unset, entries that decode, and no text Postgres
    # might refuse (`runner.stores.diffs`): the conflict filter has nothing to do, and the reader
    # decodes the entries only when asked (`Entries`).
    plain: bool = False

    def value_maps(self) -> tuple[str, str]:
        """The SET and SET_ONCE maps as JSON object texts (built from the decoded values when the reader
        did not keep ClickHouse's texts)."""
        set_json = self.set_json
        if set_json is None:
            set_json = json_dumps({key: value for key, (value, _) in self.set.items()})
        set_once_json = self.set_once_json
        if set_once_json is None:
            set_once_json = json_dumps({key: value for key, (value, _) in self.set_once.items()})
        return set_json, set_once_json


# A diff's SET, SET_ONCE and UNSET maps, decoded.
DecodedMaps = tuple[dict[str, tuple[Any, str]], dict[str, tuple[Any, str]], dict[str, str]]


class Entries:
    """A diff's entries as the reader got them, one JSON text `[set keys, values, timestamps, set_once
    keys, values, timestamps, unset keys, timestamps]`, decoded on first use into the SET, SET_ONCE and
    UNSET maps (`maps`): the set-based write needs none of them for most persons."""

    __slots__ = ("_text", "_maps")

    def __init__(self, text: str):
        self._text = text
        self._maps: DecodedMaps | None = None

    def maps(self) -> DecodedMaps:
        if self._maps is None:
            self._maps = decode_entries(self._text)
        return self._maps


class LazyMap(Mapping[str, Any]):
    """One of a diff's three maps (0 SET, 1 SET_ONCE, 2 UNSET), decoded from its `Entries` when first
    read; equal to the dict it decodes to."""

    __slots__ = ("_entries", "_which")

    def __init__(self, entries: Entries, which: int):
        self._entries = entries
        self._which = which

    def _map(self) -> dict[str, Any]:
        return self._entries.maps()[self._which]

    def __getitem__(self, key: str) -> Any:
        return self._map()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())

    def __contains__(self, key: object) -> bool:
        return key in self._map()

    def keys(self) -> KeysView[str]:
        return self._map().keys()

    def items(self) -> ItemsView[str, Any]:
        return self._map().items()

    def values(self) -> ValuesView[Any]:
        return self._map().values()

    def __repr__(self) -> str:
        return repr(self._map())


def decode_entries(text: str) -> DecodedMaps:
    """The SET, SET_ONCE and UNSET maps of an `Entries` text (raises ValueError when it is not JSON)."""
    s_keys, s_values, s_ts, o_keys, o_values, o_ts, u_keys, u_ts = json_loads(text)
    return (
        dict(zip(s_keys, zip(s_values, s_ts, strict=True), strict=True)),
        dict(zip(o_keys, zip(o_values, o_ts, strict=True), strict=True)),
        dict(zip(u_keys, u_ts, strict=True)),
    )


@dataclass(frozen=True, slots=True)
class MergeResult:
    changed: bool
    properties: JsonMap
    metadata_set: dict[str, tuple[str, str]]  # key -> (timestamp, "set" | "set_once")
    metadata_removed: list[str]

    def apply_metadata(
        self, last_updated_at: Mapping | None, last_operation: Mapping | None
    ) -> tuple[JsonMap, JsonMap]:
        """The two metadata maps after the merge (R9.7: NULL becomes `{}`; untouched keys are kept)."""
        updated = {k: v for k, v in (last_updated_at or {}).items() if k not in self.metadata_removed}
        operation = {k: v for k, v in (last_operation or {}).items() if k not in self.metadata_removed}
        for key, (ts, op) in self.metadata_set.items():
            updated[key] = ts
            operation[key] = op
        return updated, operation

    def dropped(self, diff: PersonDiff) -> tuple[list[str], list[str]]:
        """The diff's SET and SET_ONCE keys whose value is *not* written: the write takes the maps whole
        minus these (`(properties - removed) || (set_once - dropped) || (set - dropped)`)."""
        meta = self.metadata_set
        set_dropped = [k for k in diff.set if k not in meta or meta[k][1] != SET]
        set_once_dropped = [k for k in diff.set_once if k not in meta or meta[k][1] != SET_ONCE]
        return set_dropped, set_once_dropped

    def metadata_json(self) -> tuple[str, str]:
        """The metadata keys to set, as JSON objects for `properties_last_updated_at` and `..._operation`."""
        if not self.metadata_set:
            return "{}", "{}"
        # As json.dumps writes these dicts, without building them (hot path: once per updated person).
        updated: list[str] = []
        operation: list[str] = []
        for key, (ts, op) in self.metadata_set.items():
            key_json = encode_basestring_ascii(key)
            updated.append(f"{key_json}: {encode_basestring_ascii(ts)}")
            operation.append(f"{key_json}: {encode_basestring_ascii(op)}")
        return "{" + ", ".join(updated) + "}", "{" + ", ".join(operation) + "}"


# Where orjson's numbers could differ from the text's value: an integer past 64 bits (orjson makes it a
# float), a number with 16+ significant digits or an exponent (a double cannot hold every such value,
# e.g. 0.30000000000000000001, 1e400, 1e-400). Found without a regex (too slow for the hot path): the
# text is mapped to a few classes (digit or dot -> 0, e/E -> e, minus -> -, the characters a number
# follows -> :, anything else -> x), then searched for a run of 16 digits, or an exponent whose digits
# start a token. A digit run or "1e5" inside a string may send a text down the slow path; a risky
# number never takes the fast one.
_CLASSES = bytes(
    ord("0")
    if c in b"0123456789."
    else ord("e")
    if c in b"eE"
    else ord("-")
    if c == ord("-")
    else ord(":")
    if c in b":,[ \t\n\r"
    else ord("x")
    for c in range(256)
)
_LONG_RUN = b"0" * 16
_DIGIT, _MINUS, _BEFORE_NUMBER = ord("0"), ord("-"), ord(":")


def _risky_number(text: bytes) -> bool:
    classes = text.translate(_CLASSES)
    if _LONG_RUN in classes:
        return True
    at = classes.find(b"0e")
    while at != -1:
        start = at
        while start > 0 and classes[start - 1] == _DIGIT:  # back over the mantissa's digits
            start -= 1
        if start > 0 and classes[start - 1] == _MINUS:
            start -= 1
        if start == 0 or classes[start - 1] == _BEFORE_NUMBER:
            return True
        at = classes.find(b"0e", at + 2)
    return False


def exact_float(text: str) -> float | Decimal:
    """A JSON number with a fraction or exponent: a float when the float's value is the only one any
    text of that precision could mean (at most 15 significant digits, finite, not flushed to zero),
    else the exact Decimal. So two numbers compare equal exactly when their values are equal."""
    value = float(text)
    mantissa = text.lstrip("-").split("e")[0].split("E")[0].replace(".", "").strip("0")
    if len(mantissa) <= 15 and math.isfinite(value) and (value != 0.0 or not mantissa):
        return value
    return Decimal(text)


def json_loads(text: str | bytes | bytearray | memoryview) -> Any:
    """`json.loads`, through orjson where it gives the same values (several times faster; the hot path
    decodes every person's diff and Postgres properties). Python's decoder takes over for texts with a
    number a double cannot hold exactly (decoded as Decimal, see `exact_float`) and for what orjson
    refuses (NaN, Infinity, lone surrogates)."""
    if isinstance(text, memoryview):
        text = bytes(text)
    if not _risky_number(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text, parse_float=exact_float)


def exact_json_loads(text: str | bytes | bytearray | memoryview) -> Any:
    """`json.loads` keeping every number with a fraction or exponent as the Decimal of its text, so that
    `json_dumps` writes it back as it was (restore writes whole properties: what it copies from a backup
    or keeps from the row must reach Postgres unchanged; Postgres's own number texts survive the round
    trip exactly). Slower than `json_loads`: not for apply's hot path."""
    if isinstance(text, memoryview):
        text = bytes(text)
    return json.loads(text, parse_float=Decimal)


# json.dumps with its default arguments, minus the per-call argument checks (hot path).
_plain_dumps = json.JSONEncoder().encode


def _encode_exact(value: Any, out: list[str]) -> None:
    if isinstance(value, Decimal):
        out.append(str(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append(", " if i else "")
            out.append(encode_basestring_ascii(str(key)) + ": ")
            _encode_exact(item, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            out.append(", " if i else "")
            _encode_exact(item, out)
        out.append("]")
    else:
        out.append(_plain_dumps(value))


def json_dumps(value: Any) -> str:
    """`json.dumps` with its default arguments, writing the Decimals `json_loads` makes as their exact
    text (the rare slow path; the fast one is the C encoder)."""
    try:
        return _plain_dumps(value)
    except TypeError:
        out: list[str] = []
        _encode_exact(value, out)
        return "".join(out)


def display_default(value: Any) -> Any:
    """`default=` for json.dumps of output meant for people and JSON lines: a Decimal (an exactly decoded
    number) is shown as a number when a double holds it exactly, else as its text."""
    if isinstance(value, Decimal):
        as_float = float(value)
        # A number a double holds exactly is shown as one; the others as their exact text.
        return as_float if math.isfinite(as_float) and Decimal(repr(as_float)) == value else str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class BadDiffValue(ValueError):
    """A diff-table entry is not valid JSON (the team fails, naming the person)."""


def _unstorable_text(text: str) -> str | None:
    """Why Postgres's jsonb (and text) cannot hold this string, if it cannot."""
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate"
    return None


def _unstorable_value(value: Any) -> str | None:
    if isinstance(value, str):
        return _unstorable_text(value)
    if isinstance(value, dict):
        for key, item in value.items():
            reason = _unstorable_text(key) or _unstorable_value(item)
            if reason:
                return reason
    elif isinstance(value, list):
        for item in value:
            reason = _unstorable_value(item)
            if reason:
                return reason
    return None


def unstorable(diff: PersonDiff) -> str | None:
    """Why Postgres cannot take this diff (the person fails on its own, outcome `invalid_value`), or
    None. Cheap for the common case: only texts with an escape sequence or a NUL are looked into."""
    for kind, entries in ((SET, diff.set), (SET_ONCE, diff.set_once)):
        for key, (value, _) in entries.items():
            reason = _unstorable_text(key) or _unstorable_value(value)
            if reason:
                return f"{kind} {key!r}: the value or key holds {reason}, which Postgres cannot store"
    for key in diff.unset:
        reason = _unstorable_text(key)
        if reason:
            return f"unset {key!r}: the key holds {reason}, which Postgres cannot store"
    return None


def iso_timestamp(ts: datetime) -> str:
    """R9.7: `2026-01-07T14:52:00.123456+00:00`, without the fraction when microseconds are zero. A naive
    datetime is UTC."""
    return (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)).isoformat()


def decode_diff(
    team_id: int,
    person_uuid: UUID,
    baseline_version: int,
    set_entries: Iterable[tuple[str, str, datetime | str]],
    set_once_entries: Iterable[tuple[str, str, datetime | str]],
    unset_entries: Iterable[tuple[str, datetime | str]],
    batch_index: int = 0,
) -> PersonDiff:
    """Build a PersonDiff from entries whose values are raw JSON text (as the diff table stores them)."""

    def ts(value: datetime | str) -> str:
        return value if isinstance(value, str) else iso_timestamp(value)

    def typed(entries: Iterable[tuple[str, str, datetime | str]]) -> dict[str, tuple[Any, str]]:
        out: dict[str, tuple[Any, str]] = {}
        for key, raw, at in entries:
            try:
                out[key] = (json.loads(raw), ts(at))
            except ValueError as exc:
                raise BadDiffValue(
                    f"team {team_id} person {person_uuid}: value of {key!r} is not valid JSON: {raw[:80]!r}"
                ) from exc
        return out

    return PersonDiff(
        team_id,
        person_uuid,
        baseline_version,
        typed(set_entries),
        typed(set_once_entries),
        {key: ts(at) for key, at in unset_entries},
        batch_index,
    )


def conflict_filter(diff: PersonDiff) -> PersonDiff:
    """§7: resolve keys that are both set (or set once) and unset, by timestamp; ties go to UNSET.

    Both passes use the timestamps of the original UNSET map (R7.2). Idempotent.
    """
    if diff.plain:
        return diff  # ClickHouse found no key both set (or set once) and unset
    unset = diff.unset
    if not unset or not (diff.set.keys() & unset.keys() or diff.set_once.keys() & unset.keys()):
        return diff
    set_map = dict(diff.set)
    set_once_map = dict(diff.set_once)
    unset_map = dict(unset)
    for key, t_unset in unset.items():
        if key in set_map:
            if set_map[key][1] > t_unset:
                unset_map.pop(key, None)
            else:
                del set_map[key]
    for key, t_unset in unset.items():
        if key in set_once_map:
            if set_once_map[key][1] > t_unset:
                unset_map.pop(key, None)
            else:
                del set_once_map[key]
    return PersonDiff(
        diff.team_id,
        diff.person_uuid,
        diff.baseline_version,
        set_map,
        set_once_map,
        unset_map,
        diff.batch_index,
        None,  # recomputed from the filtered entries
        # ClickHouse's texts of a map the filter changed are rebuilt from the decoded values (equal
        # values; rare: a key both set and unset in the window).
        diff.set_json if len(set_map) == len(diff.set) else None,
        diff.set_once_json if len(set_once_map) == len(diff.set_once) else None,
        diff.invalid,
    )


def json_equal(a: Any, b: Any) -> bool:
    """Equality of decoded JSON values as jsonb's `=` decides it: objects by keys (order never
    matters), arrays in order, numbers by their exact decimal value (`1 == 1.0`), and booleans never
    equal to numbers (unlike Python's `True == 1`)."""
    kind = type(a)
    if kind is type(b) and (kind is str or kind is int):  # the common case, first
        return bool(a == b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict | list) or isinstance(b, dict | list):
        return False
    # A float and a Decimal: compared by the decimal values of their texts, as jsonb compares numbers.
    # A float here came from a text of at most 15 significant digits (`exact_float`), which its repr
    # gives back exactly; Python's float == Decimal would compare the double's binary value instead
    # (0.1 == Decimal("0.1000000000000000055511151231257827021181583404541015625")).
    if isinstance(a, float) and isinstance(b, Decimal):
        return Decimal(repr(a)) == b
    if isinstance(a, Decimal) and isinstance(b, float):
        return a == Decimal(repr(b))
    return bool(a == b)


def simple_merge(properties: Mapping[str, Any] | None, diff: PersonDiff) -> MergeResult:
    """R9.4: Postgres is at the baseline version. SET_ONCE fills absent keys, SET overwrites, UNSET
    removes.

    Deliberate difference from the original: an entry that would not change the live row (a SET whose
    value Postgres already holds, an UNSET of an absent key) is not written, so it neither bumps the
    version nor republishes the person (the original counted both as changes, gotcha 20)."""
    props = dict(properties or {})
    metadata: dict[str, tuple[str, str]] = {}
    removed: list[str] = []
    for key, (value, ts) in diff.set_once.items():
        if key not in props:
            props[key] = value
            metadata[key] = (ts, SET_ONCE)
    for key, (value, ts) in diff.set.items():
        if key in props and json_equal(props[key], value):
            continue
        props[key] = value
        metadata[key] = (ts, SET)
    for key in diff.unset:
        if key in props:
            del props[key]
            metadata.pop(key, None)
            removed.append(key)
    return MergeResult(bool(metadata or removed), props, metadata, removed)


def concurrently_changed_keys(base: Mapping[str, Any], current: Mapping[str, Any]) -> set[str]:
    """R9.5: keys whose value differs between the historic ClickHouse state and Postgres (absent and
    JSON null alike; Python equality, so 1 == 1.0 == True)."""
    return {key for key in base.keys() | current.keys() if base.get(key) != current.get(key)}


def three_way_merge(
    base: Mapping[str, Any], properties: Mapping[str, Any] | None, diff: PersonDiff
) -> MergeResult:
    """R9.5: Postgres moved on from the baseline. Keys changed concurrently (base vs current) are left
    alone: Postgres wins every conflict; everything else merges as in R9.4."""
    current = properties or {}
    changed_keys = concurrently_changed_keys(base, current)
    props = dict(current)
    metadata: dict[str, tuple[str, str]] = {}
    removed: list[str] = []
    for key, (value, ts) in diff.set_once.items():
        if key not in current and key not in changed_keys:
            props[key] = value
            metadata[key] = (ts, SET_ONCE)
    for key, (value, ts) in diff.set.items():
        if key not in changed_keys and not (key in current and json_equal(current[key], value)):
            props[key] = value
            metadata[key] = (ts, SET)
    for key in diff.unset:
        if key in current and key not in changed_keys:
            props.pop(key, None)
            metadata.pop(key, None)
            removed.append(key)
    return MergeResult(bool(metadata or removed), props, metadata, removed)


def pending_operations_json(diff: PersonDiff) -> str:
    """R9.9 as JSON text: every entry of the diff, SET first, then SET_ONCE, then UNSET (value null)."""
    if diff.pending_operations is not None:
        return diff.pending_operations
    parts = []
    for kind, entries in ((SET, diff.set), (SET_ONCE, diff.set_once)):
        for key, (value, ts) in entries.items():
            parts.append(
                f'{{"key": {encode_basestring_ascii(key)}, "value": {json.dumps(value)}, '
                f'"timestamp": "{ts}", "operation": "{kind}"}}'
            )
    for key, ts in diff.unset.items():
        key_json = encode_basestring_ascii(key)
        parts.append(f'{{"key": {key_json}, "value": null, "timestamp": "{ts}", "operation": "unset"}}')
    return "[" + ", ".join(parts) + "]"


def diff_entries(diff: PersonDiff) -> tuple[JsonMap, JsonMap, list[str], dict[str, dict[str, str]]]:
    """The diff as the JSON output shows it: set, set_once, unset keys and their ISO timestamps."""
    timestamps = {
        SET: {key: ts for key, (_, ts) in diff.set.items()},
        SET_ONCE: {key: ts for key, (_, ts) in diff.set_once.items()},
        UNSET: dict(diff.unset),
    }
    return (
        {key: value for key, (value, _) in diff.set.items()},
        {key: value for key, (value, _) in diff.set_once.items()},
        list(diff.unset),
        timestamps,
    )


def kafka_created_at(created_at: datetime | None, now: datetime | None = None) -> str:
    """§2.7 `created_at`: `YYYY-MM-DD HH:MM:SS.ffffff`, converted to UTC (the original used the
    driver's wall clock; see "Differences from the original job")."""
    ts = created_at if created_at is not None else (now or datetime.now(UTC))
    return (ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)).strftime(
        "%Y-%m-%d %H:%M:%S.%f"
    )


def kafka_message(
    person_uuid: UUID | str,
    team_id: int,
    properties_json: str,
    is_identified: bool,
    created_at: str,
    version: int,
) -> str:
    """§2.7: the person message, exactly as Python's default JSON encoder writes the dict
    `{id, team_id, properties, is_identified, is_deleted, created_at, version}` (built by hand: it is
    the hot path). `properties_json` is the JSON text of the full new properties (double-encoded),
    `created_at` the text of `kafka_created_at`."""
    return (
        f'{{"id": "{person_uuid}", "team_id": {int(team_id)}, '
        f'"properties": {encode_basestring_ascii(properties_json)}, '
        f'"is_identified": {1 if is_identified else 0}, "is_deleted": 0, '
        f'"created_at": {encode_basestring_ascii(created_at)}, "version": {int(version)}}}'
    )
