"""`runner demo seed`: deterministic PostHog-shaped demo data with a bug window of lost updates.

What it writes (after creating the tables if needed, and by default emptying them first):

- ClickHouse `events`, `person`, `person_distinct_id_overrides` in the source database;
- Postgres `posthog_person`.

Because it empties PostHog's tables, it refuses a ClickHouse or Postgres that is not local (embedded
engine, loopback host or unix socket) unless `--allow-remote` is given.

The model behind the data:

- Teams get ids `1..teams`; persons are spread over them with decreasing weights (team 1 is the
  largest, every team has at least one person). `--persons` counts every person ever created,
  including the ones later merged away. With three or more teams the highest team id is *quiet*:
  none of its events inside the bug window carries a property operation, so team discovery (spec R4)
  must skip it.
- Every person has one to four distinct_ids. About 7% of the persons are merged into another person
  of their team, and a fifth of the merge targets are later merged again (chains B -> A -> C). Each
  re-assignment of a distinct_id is an override row with the next version (1, then 2 for chains), so
  the highest version wins. Events carry the person the distinct_id belonged to *at ingestion time*:
  before the merge the old person, after it the new one, so resolving through the overrides matters.
  Merged-away persons are deleted: their last ClickHouse row has `is_deleted = 1` (version + 100, as
  PostHog deletes) and they are absent from Postgres. A few distinct_ids carry an override to the wrong
  person that was later deleted (`is_deleted = 1` at a higher version): their events belong to the
  event's own `person_id`.
- Events lie in `[start, start + days)`, a fixed anchor: the data never depends on the wall clock and
  every timestamp is in the past. Most events are ordinary traffic; about a quarter carry `$set`,
  `$set_once` and/or `$unset` (a person's first event more often). Values are strings (some empty,
  some non-ASCII), numbers, booleans, arrays and nested objects; some are JSON null. There are
  blocklisted keys (spec R5.6), `$set`/`$set_once` that are not objects, `$unset` as an object
  (ignored), and malformed `properties` JSON. Within one event a key appears in one kind only, and
  the events of one resolved person have distinct timestamps, so the replay below is unambiguous.
- Truth: a person's properties are the replay, in timestamp order, of the operations of every event
  resolving to it (`$set` overwrites, `$set_once` only fills an absent key, `$unset` removes; nulls
  and blocklisted keys are ignored; malformed JSON and non-object forms produce nothing).
- The bug: of the events inside `[bug_window_start, bug_window_end)` that carry operations, a
  fraction (`--lost-fraction`) had their operations lost. The stored state (ClickHouse `person` and
  Postgres `posthog_person`, identical: uuid, team, properties, version, created_at, is_identified) is
  the replay without those events. `version` counts the events whose operations changed the person
  after the creating one; `properties_last_updated_at`/`properties_last_operation` describe only the
  creating event (spec R2.5).
- Oddities the pipeline must tolerate, each on about half a percent of the live persons: deleted in
  ClickHouse (tombstone row; half of them still in Postgres), present in ClickHouse but missing in
  Postgres, NULL `version` in Postgres; and about 5% have older versions as extra ClickHouse rows
  (ReplacingMergeTree history).

Serialisation mirrors production: event `properties` are compact JSON with raw UTF-8 (as the capture
SDKs send them); person `properties` in ClickHouse are Python's default `json.dumps` (", " and ": ",
non-ASCII escaped), as in the person Kafka message (spec §2.7); Postgres holds them as jsonb.

Everything random comes from `random.Random` streams seeded from `--seed`, so a seed gives identical
tables. Writing is bulk: events go to ClickHouse as large TabSeparated inserts from a background
thread while the generator runs (the engine releases the GIL), persons and overrides as one insert
each, Postgres as one COPY. About 2.5 s for 100k events and 20 s for 1M on two cores.

Python API: `seed(...) -> SeedResult` (what the command runs), `generate(SeedConfig) -> Dataset`
(pure, no I/O), `operations_from_properties` / `apply_operations` (the replay semantics, used by the
tests to check the stored state), `clickhouse_fingerprint` / `postgres_fingerprint` (determinism).
"""

from __future__ import annotations

import io
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from runner.config import settings
from runner.local import guard

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_START = "2026-01-05 00:00:00"
DEFAULT_DAYS = 5
DEFAULT_BUG_WINDOW_START = "2026-01-06 20:01:00"
DEFAULT_BUG_WINDOW_END = "2026-01-07 14:52:00"
DEFAULT_LOST_FRACTION = 0.3

# Spec R5.6: keys that never trigger a person update and are never reconciled.
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

# Rates of the generator (per event, person or team as named).
_OPS_RATE = 0.24  # events carrying property operations
_FIRST_EVENT_OPS_RATE = 0.75  # a person's first event (identify / signup)
_MALFORMED_RATE = 0.004
_MERGE_RATE = 0.07  # persons merged into another person of their team
_CHAIN_RATE = 0.2  # merge targets merged again later
_DELETED_OVERRIDE_RATE = 0.03  # live persons with a wrong override that was deleted
_FATE_DELETED = 0.006
_FATE_MISSING_IN_PG = 0.006
_FATE_NULL_VERSION = 0.006
_FATE_HISTORY = 0.05
_NULL_VALUE_RATE = 0.04
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


# --- the semantics of property operations (pure) ---------------------------------------------------

Operation = tuple[str, str, Any]  # (kind, key, value); value is None for UNSET


def operations_from_properties(properties: str) -> list[Operation]:
    """The operations one event carries (spec R5.4): `$set`, `$set_once`, `$unset` in that order.

    Malformed JSON, non-object `$set`/`$set_once`, non-array `$unset`, null values and blocklisted
    keys produce nothing.
    """
    try:
        doc = json.loads(properties)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    ops: list[Operation] = []
    for kind, name in ((SET, "$set"), (SET_ONCE, "$set_once")):
        obj = doc.get(name)
        if isinstance(obj, dict):
            ops.extend((kind, k, v) for k, v in obj.items() if v is not None and k not in BLOCKLIST)
    unset = doc.get("$unset")
    if isinstance(unset, list):
        for element in unset:
            key = _unset_key(element)
            if key not in BLOCKLIST:
                ops.append((UNSET, key, None))
    return ops


def _unset_key(element: Any) -> str:
    if isinstance(element, str):
        return element
    if isinstance(element, bool):
        return "true" if element else "false"
    if isinstance(element, int | float):
        return json.dumps(element)
    return ""


def apply_operations(state: dict[str, Any], ops: Iterable[Operation]) -> bool:
    """Apply one event's operations to `state` in place; True when the state changed."""
    changed = False
    for kind, key, value in ops:
        if kind == SET:
            if key not in state or state[key] != value or type(state[key]) is not type(value):
                state[key] = value
                changed = True
        elif kind == SET_ONCE:
            if key not in state:
                state[key] = value
                changed = True
        elif key in state:
            del state[key]
            changed = True
    return changed


# --- configuration ---------------------------------------------------------------------------------


def parse_time(value: str, name: str) -> datetime:
    try:
        return datetime.strptime(value.strip(), TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise settings.ConfigError(
            f"{name} must look like 'YYYY-MM-DD HH:MM:SS' (UTC), got {value!r}"
        ) from None


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SeedConfig:
    teams: int
    persons: int
    events: int
    seed: int
    start: str = DEFAULT_START
    days: int = DEFAULT_DAYS
    bug_window_start: str = DEFAULT_BUG_WINDOW_START
    bug_window_end: str = DEFAULT_BUG_WINDOW_END
    lost_fraction: float = DEFAULT_LOST_FRACTION

    def validate(self, now: datetime | None = None) -> None:
        if self.teams < 1:
            raise settings.ConfigError(f"--teams must be at least 1, got {self.teams}")
        if self.persons < self.teams:
            raise settings.ConfigError(
                f"--persons ({self.persons}) must be at least --teams ({self.teams}): "
                "every team gets a person"
            )
        if self.events < 0:
            raise settings.ConfigError(f"--events must not be negative, got {self.events}")
        if self.days < 1:
            raise settings.ConfigError(f"--days must be at least 1, got {self.days}")
        if not 0.0 <= self.lost_fraction <= 1.0:
            raise settings.ConfigError(f"--lost-fraction must be within [0, 1], got {self.lost_fraction}")
        start = parse_time(self.start, "--start")
        w0 = parse_time(self.bug_window_start, "--bug-window-start")
        w1 = parse_time(self.bug_window_end, "--bug-window-end")
        if w0 >= w1:
            raise settings.ConfigError(
                f"--bug-window-start ({self.bug_window_start}) must be before "
                f"--bug-window-end ({self.bug_window_end})"
            )
        end = start + timedelta(days=self.days)
        if end > (now or datetime.now(UTC)):
            raise settings.ConfigError(
                f"the events would reach {end:%Y-%m-%d %H:%M:%S}, which is in the future: "
                "move --start back or lower --days"
            )
        if w1 <= start or w0 >= end:
            raise settings.ConfigError(
                f"the bug window [{self.bug_window_start}, {self.bug_window_end}) lies outside the events' "
                f"range [{start:%Y-%m-%d %H:%M:%S}, {end:%Y-%m-%d %H:%M:%S})"
            )

    @property
    def start_us(self) -> int:
        return _micros(parse_time(self.start, "--start"))

    @property
    def end_us(self) -> int:
        return self.start_us + self.days * 86_400_000_000

    @property
    def window_us(self) -> tuple[int, int]:
        return (
            _micros(parse_time(self.bug_window_start, "--bug-window-start")),
            _micros(parse_time(self.bug_window_end, "--bug-window-end")),
        )


# --- the generated dataset -------------------------------------------------------------------------


@dataclass(slots=True)
class _Person:
    idx: int
    team_id: int
    uuid: str
    distinct_ids: list[str]
    is_identified: bool
    timestamps: list[int] = field(default_factory=list)
    merged_into: _Person | None = None
    merged_at: int = 0
    fate: str = "live"
    state: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    created_us: int = 0
    last_update_us: int = 0
    creation_ops: list[Operation] = field(default_factory=list)
    creation_ts: int = 0
    history: list[tuple[int, str, int]] = field(default_factory=list)  # (version, properties, at)

    def final(self) -> _Person:
        person = self
        while person.merged_into is not None:
            person = person.merged_into
        return person

    def owner_at(self, ts: int) -> _Person:
        """The person the distinct_ids of `self` belonged to at time `ts` (what ingestion wrote)."""
        person = self
        while person.merged_into is not None and ts >= person.merged_at:
            person = person.merged_into
        return person


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


def _tsv(text: str) -> str:
    # JSON escapes control characters, so only the backslash needs escaping for TabSeparated.
    return text.replace("\\", "\\\\") if "\\" in text else text


_BLOCK_LINES = 20_000


def _encode(lines: list[str]) -> list[bytes]:
    return [("\n".join(lines) + "\n").encode()] if lines else []


def _join(lines: list[bytes]) -> list[bytes]:
    return [b"".join(lines)] if lines else []


def _expand(weighted: Sequence[tuple[Any, int]]) -> list[Any]:
    return [item for item, weight in weighted for _ in range(weight)]


_NAMES = [
    "Ada Lovelace",
    "Grace Hopper",
    "Zoë Ångström",
    "李雷",
    "Sam O'Neil",
    "Ana María",
    "Kofi Mensah",
    "Ravi",
]
_COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries"]
_PLANS = ["free", "startup", "scale", "enterprise"]
_CITIES = ["London", "Berlin", "São Paulo", "Tokyo", "Lagos", "Austin", "Zürich"]
_COUNTRIES = ["United Kingdom", "Germany", "Brazil", "Japan", "Nigeria", "United States", "Switzerland"]
_FEATURES = ["funnels", "replay", "flags", "surveys", "experiments"]
_NICKNAMES = ["", "sam", "Zoë", "🚀 rocket", "x"]
_SOURCES = ["google", "newsletter", "producthunt", "direct", "partner"]
_BROWSERS = ["Chrome", "Firefox", "Safari", "Edge"]
_OSES = ["Mac OS X", "Windows", "Linux", "iOS", "Android"]
_DEVICES = ["Desktop", "Mobile", "Tablet"]
_PATHS = ["", "pricing", "docs", "blog/launch", "settings", "signup", "insights/abc", "dashboard"]


def _value(rng: random.Random, key: str, person: int) -> Any:
    r = rng.random()
    if key == "email":
        return f"user{person}@example.com" if r < 0.7 else f"u{person}.{int(r * 100)}@corp.example"
    if key == "name":
        return _NAMES[int(r * len(_NAMES))]
    if key in ("plan", "first_plan"):
        return _PLANS[int(r * len(_PLANS))]
    if key == "company":
        return _COMPANIES[int(r * len(_COMPANIES))]
    if key == "age":
        return 18 + int(r * 60)
    if key == "score":
        return round(r * 100, 2)
    if key == "logins":
        return int(r * 500)
    if key == "is_paying":
        return r < 0.4
    if key == "beta_features":
        return [f for i, f in enumerate(_FEATURES) if (int(r * 32) >> i) & 1]
    if key == "address":
        city = int(r * len(_CITIES))
        return {
            "city": _CITIES[city],
            "zip": f"{int(r * 90000) + 10000}",
            "geo": {"lat": round(r * 90, 4), "lon": round(-r * 120, 4)},
        }
    if key == "nickname":
        return _NICKNAMES[int(r * len(_NICKNAMES))]
    if key in ("$geoip_country_name", "first_seen_country"):
        return _COUNTRIES[int(r * len(_COUNTRIES))]
    if key == "$geoip_city_name":
        return _CITIES[int(r * len(_CITIES))]
    if key == "locale":
        return ["en-US", "de-DE", "pt-BR", "ja-JP"][int(r * 4)]
    if key in ("signup_source", "$initial_referrer"):
        return _SOURCES[int(r * len(_SOURCES))]
    if key == "$initial_os" or key == "$os":
        return _OSES[int(r * len(_OSES))]
    if key == "$browser":
        return _BROWSERS[int(r * len(_BROWSERS))]
    if key == "$current_url":
        return f"https://app.example.com/{_PATHS[int(r * len(_PATHS))]}"
    if key in ("$geoip_latitude", "$geoip_longitude"):
        return round(r * 90, 4)
    if key in ("$screen_width", "$viewport_width"):
        return [1280, 1440, 1920, 390][int(r * 4)]
    if key == "created_via":
        return {"sdk": "web", "version": f"1.{int(r * 200)}.0"}
    return f"v{int(r * 1000)}"


_SET_KEYS = _expand(
    [
        ("plan", 8),
        ("email", 6),
        ("name", 5),
        ("company", 4),
        ("logins", 4),
        ("score", 3),
        ("is_paying", 3),
        ("age", 2),
        ("nickname", 3),
        ("beta_features", 2),
        ("address", 2),
        ("locale", 2),
        ("$geoip_country_name", 2),
        ("$geoip_city_name", 2),
    ]
)
_SET_ONCE_KEYS = _expand(
    [
        ("$initial_referrer", 4),
        ("$initial_os", 3),
        ("signup_source", 4),
        ("first_plan", 3),
        ("first_seen_country", 2),
        ("created_via", 2),
        ("email", 1),
        ("plan", 1),
    ]
)
_UNSET_KEYS = _expand(
    [("nickname", 4), ("beta_features", 3), ("company", 2), ("plan", 2), ("address", 2), ("score", 1)]
)
_BLOCKLISTED_IN_OPS = ["$browser", "$os", "$current_url", "$geoip_latitude", "$screen_width"]
_NON_OBJECTS: list[Any] = ["plan=free", 42, ["email", "x@example.com"], True, None, ""]
_ORDINARY_EVENTS = _expand(
    [
        ("$pageview", 50),
        ("$autocapture", 20),
        ("$pageleave", 12),
        ("feature_used", 8),
        ("purchase", 4),
        ("$screen", 3),
        ("$exception", 3),
    ]
)
_OPS_EVENTS = _expand(
    [("$identify", 3), ("$set", 3), ("$pageview", 2), ("signed_up", 1), ("plan_changed", 1)]
)
_ELEMENTS_CHAIN = (
    'button.btn.btn-primary:attr__class="btn btn-primary"nth-child="2"nth-of-type="1"text="Sign up"'
)


# Ordinary event properties: a prefix and a suffix from fixed pools around a per-person session id.
_PREFIXES = [
    f'{{"$current_url":"https://app.example.com/{path}","$pathname":"/{path}","$browser":"{browser}",'
    f'"$browser_version":{120 + (i % 12)},"$os":"{os_}","$device_type":"{device}",'
    for i, (path, browser, os_, device) in enumerate(
        (p, b, o, d) for p in _PATHS for b in _BROWSERS for o in _OSES for d in _DEVICES
    )
]
_SUFFIXES = [
    f'"$lib":"web","$lib_version":"1.{version}.0","$geoip_country_name":"{country}","amount":'
    for version in range(150, 170)
    for country in _COUNTRIES
]
_MASK62 = (1 << 62) - 1


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _operations_text(rng: random.Random, person: int, counts: dict[str, int]) -> tuple[str, list[Operation]]:
    """The `$set`/`$set_once`/`$unset` members of one event (JSON text) and the operations they carry."""
    want_set = rng.random() < 0.72
    want_once = rng.random() < 0.3
    want_unset = rng.random() < 0.16
    if not (want_set or want_once or want_unset):
        want_set = True
    used: set[str] = set()
    fragment: dict[str, Any] = {}
    ops: list[Operation] = []

    def pick(pool: list[str], count: int) -> list[str]:
        keys = []
        for _ in range(count):
            key = pool[int(rng.random() * len(pool))]
            if key not in used:
                used.add(key)
                keys.append(key)
        return keys

    def members(kind: str, pool: list[str], count: int) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key in pick(pool, count):
            value = None if rng.random() < _NULL_VALUE_RATE else _value(rng, key, person)
            obj[key] = value
            if value is None:
                counts["null_values"] += 1
            else:
                ops.append((kind, key, value))
        if rng.random() < 0.25:
            key = _BLOCKLISTED_IN_OPS[int(rng.random() * len(_BLOCKLISTED_IN_OPS))]
            if key not in used:
                used.add(key)
                obj[key] = _value(rng, key, person)
                counts["blocklisted_operations"] += 1
        return obj

    for kind, name, pool, wanted, non_object_rate in (
        (SET, "$set", _SET_KEYS, want_set, 0.02),
        (SET_ONCE, "$set_once", _SET_ONCE_KEYS, want_once, 0.015),
    ):
        if not wanted:
            continue
        if rng.random() < non_object_rate:
            value: Any = _NON_OBJECTS[int(rng.random() * len(_NON_OBJECTS))]
            counts["non_object_operations"] += 1
        else:
            value = members(kind, pool, 1 + int(rng.random() * 3))
        fragment[name] = value
    if want_unset:
        keys = pick(_UNSET_KEYS, 1 + int(rng.random() * 2))
        if rng.random() < 0.08:
            # `$unset` as an object is ignored (spec R5.4, gotcha 14)
            fragment["$unset"] = dict.fromkeys(keys, "")
            counts["unset_objects"] += 1
        else:
            if rng.random() < 0.1:
                keys.append("$browser")
                counts["blocklisted_operations"] += 1
            ops.extend((UNSET, key, None) for key in keys if key not in BLOCKLIST)
            fragment["$unset"] = keys
    return _compact(fragment)[1:-1], ops


def _malformed(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.4:
        return text[: len(text) // 2]  # truncated
    if r < 0.6:
        return text.replace('"', "'")  # Python repr instead of JSON
    if r < 0.8:
        return text[:-1] + ",}"  # trailing comma
    if r < 0.9:
        return "properties unavailable"
    return ""


def generate(config: SeedConfig, event_sink: Callable[[bytes], None] | None = None) -> Dataset:
    """Build the whole dataset in memory, deterministically from `config` (no I/O)."""
    config.validate()
    seed = config.seed
    rng_people = random.Random(f"recon-seed/{seed}/people")
    rng_events = random.Random(f"recon-seed/{seed}/events")
    start_us, end_us = config.start_us, config.end_us
    span = end_us - start_us
    w0, w1 = config.window_us
    team_ids = list(range(1, config.teams + 1))
    quiet_team = team_ids[-1] if config.teams >= 3 else None
    counts: dict[str, int] = dict.fromkeys(
        [
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
        ],
        0,
    )

    # Persons, spread over teams with decreasing weights.
    per_team = _allocate(config.persons, [1 / (i**0.7) for i in team_ids], 1)
    persons: list[_Person] = []
    by_team: dict[int, list[_Person]] = {}
    for team_id, size in zip(team_ids, per_team, strict=True):
        members = by_team.setdefault(team_id, [])
        for _ in range(size):
            idx = len(persons)
            identified = rng_people.random() < 0.45
            n_ids = 1 + int(rng_people.random() ** 1.8 * 4)
            dids = [_uuid4(rng_people)]
            if identified:
                dids.append(f"user{idx}@example.com")
            while len(dids) < n_ids:
                dids.append(_uuid4(rng_people))
            person = _Person(idx, team_id, _uuid4(rng_people), dids, identified)
            persons.append(person)
            members.append(person)
    counts["persons"] = len(persons)

    # Events per person: one each first (when there are enough), the rest skewed to heavy users.
    n_persons = len(persons)
    per_person = [0] * n_persons
    order = list(range(n_persons))
    rng_people.shuffle(order)
    rand = rng_people.random
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

    # Merges: B -> A at a time after both exist; a fifth of the targets later -> C.
    override_rows: list[str] = []
    override_versions: dict[tuple[int, str], int] = {}

    def reassign(person: _Person, distinct_id: str, target: _Person, at: int) -> None:
        key = (person.team_id, distinct_id)
        version = override_versions.get(key, 0) + 1
        override_versions[key] = version
        override_rows.append(
            f"{person.team_id}\t{distinct_id}\t{target.uuid}\t0\t{version}\t{at // 1_000_000}\t"
            f"{len(override_rows)}\t0"
        )

    for team_id in team_ids:
        finals: list[_Person] = []
        absorbed: dict[int, list[_Person]] = {}
        for person in by_team[team_id]:
            if person.timestamps and finals and rng_people.random() < _MERGE_RATE:
                target = finals[int(rng_people.random() * len(finals))]
                low = max(person.created_us, target.created_us)
                person.merged_into = target
                person.merged_at = low + int(rng_people.random() * (end_us - low))
                absorbed.setdefault(target.idx, []).append(person)
                counts["merged_persons"] += 1
                for did in person.distinct_ids:
                    reassign(person, did, target, person.merged_at)
            elif person.timestamps:
                finals.append(person)
        chained = [t for t in finals if t.idx in absorbed and rng_people.random() < _CHAIN_RATE]
        chained_ids = {t.idx for t in chained}
        keep = [p for p in finals if p.idx not in chained_ids]
        for target in chained:
            if len(keep) < 1:
                break
            last = keep[int(rng_people.random() * len(keep))]
            low = max([target.created_us, last.created_us] + [s.merged_at for s in absorbed[target.idx]])
            target.merged_into = last
            target.merged_at = low + int(rng_people.random() * (end_us - low))
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
            if len(keep) > 1 and person.idx not in absorbed and rng_people.random() < _DELETED_OVERRIDE_RATE:
                did = person.distinct_ids[int(rng_people.random() * len(person.distinct_ids))]
                wrong = keep[int(rng_people.random() * len(keep))]
                if wrong is person:
                    continue
                at = start_us + int(rng_people.random() * span)
                gone = at + int(rng_people.random() * (end_us - at))
                reassign(person, did, wrong, at)
                key = (person.team_id, did)
                override_versions[key] += 1
                override_rows.append(
                    f"{person.team_id}\t{did}\t{wrong.uuid}\t1\t{override_versions[key]}\t{gone // 1_000_000}"
                    f"\t{len(override_rows)}\t0"
                )
                counts["deleted_overrides"] += 1
    counts["overrides"] = len(override_rows)

    # Fates of the persons that survive merges.
    groups: dict[int, list[_Person]] = {}
    for person in persons:
        groups.setdefault(person.final().idx, []).append(person)
    for person in persons:
        if person.merged_into is None:
            r = rng_people.random()
            if r < _FATE_DELETED:
                person.fate = "deleted"
            elif r < _FATE_DELETED + _FATE_MISSING_IN_PG:
                person.fate = "missing_in_pg"
            elif r < _FATE_DELETED + _FATE_MISSING_IN_PG + _FATE_NULL_VERSION:
                person.fate = "null_version"
            elif r < _FATE_DELETED + _FATE_MISSING_IN_PG + _FATE_NULL_VERSION + _FATE_HISTORY:
                person.fate = "history"

    # Events, group by group (a final person and everyone merged into it), in timestamp order.
    ev_rand = rng_events.random
    ev_bits = rng_events.getrandbits
    # Lines are encoded one by one: a joined str with one non-ASCII character would be 4 bytes per character.
    lines: list[bytes] = []
    blocks: list[bytes] = []
    append = lines.append
    offset = window_events = operation_events = window_operation_events = lost_events = malformed_events = 0
    lost_fraction = config.lost_fraction
    n_ordinary, n_ops, n_prefixes, n_suffixes = (
        len(_ORDINARY_EVENTS),
        len(_OPS_EVENTS),
        len(_PREFIXES),
        len(_SUFFIXES),
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
                f'{_PREFIXES[r % n_prefixes]}"$session_id":"s-{member.idx:x}-{ts // 3_600_000_000:x}",'
                f"{_SUFFIXES[(r >> 10) % n_suffixes]}{(r >> 20) % 500}}}"
            )
            ops: list[Operation] = []
            malformed = ev_rand() < _MALFORMED_RATE
            if (ev_rand() < (_FIRST_EVENT_OPS_RATE if first_of_member else _OPS_RATE) or malformed) and not (
                quiet and in_window
            ):
                fragment, ops = _operations_text(rng_events, member.idx, counts)
                props = f"{props[:-1]},{fragment}}}"
                event = _OPS_EVENTS[int(ev_rand() * n_ops)]
            else:
                event = _ORDINARY_EVENTS[int(ev_rand() * n_ordinary)]
            if malformed:
                props = _malformed(rng_events, props)
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
                f"{_ELEMENTS_CHAIN if event == '$autocapture' else ''}\t{created_at}\t{ingested.uuid}\t"
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

    # Person rows: ClickHouse (with history and tombstones) and Postgres (the same current state).
    person_rows: list[str] = []
    pg_rows: list[tuple] = []

    def ch_row(person: _Person, properties: str, version: int, deleted: int, at: int) -> None:
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
            version, old, at = person.history[int(rng_people.random() * (len(person.history) - 1))]
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
            stamp = (_EPOCH + timedelta(microseconds=person.creation_ts)).isoformat()
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
                _EPOCH + timedelta(microseconds=person.created_us),
            )
        )
    counts["clickhouse_person_rows"] = len(person_rows)
    counts["postgres_persons"] = len(pg_rows)

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


# --- writing ---------------------------------------------------------------------------------------

# Keep every row of one insert: ReplacingMergeTree would otherwise collapse the history rows and the
# overrides' earlier versions at insert time.
# Times are sent as integer ticks of the column's precision (documented for DateTime64), which the
# basic parser reads exactly.
_INSERT_SETTINGS = {"optimize_on_insert": 0, "date_time_input_format": "basic"}


def prepare_clickhouse(cli: Any, database: str, reset: bool = True) -> None:
    """Create the source tables if needed; with `reset`, empty them."""
    from runner.local import sources
    from runner.stores import warehouse

    sources.init_sources(cli, database)
    if reset:
        for table in sources.SOURCE_TABLES:
            cli.command(f"TRUNCATE TABLE {warehouse.ident(database)}.{warehouse.ident(table)}")


def _insert(cli: Any, database: str, table: str, columns: Sequence[str], blocks: Iterable[bytes]) -> None:
    cli.raw_insert(
        f"{database}.{table}", list(columns), iter(blocks), settings=_INSERT_SETTINGS, fmt="TabSeparated"
    )


def write_clickhouse(dataset: Dataset, cli: Any, database: str, reset: bool = True) -> None:
    """Write a generated dataset (with its events in memory) to the ClickHouse sources."""
    prepare_clickhouse(cli, database, reset)
    if dataset.events_tsv:
        _insert(cli, database, "events", EVENT_COLUMNS, dataset.events_tsv)
    _write_clickhouse_persons(dataset, cli, database)


def _write_clickhouse_persons(dataset: Dataset, cli: Any, database: str) -> None:
    if dataset.persons_tsv:
        _insert(cli, database, "person", PERSON_COLUMNS, dataset.persons_tsv)
    if dataset.overrides_tsv:
        _insert(cli, database, "person_distinct_id_overrides", OVERRIDE_COLUMNS, dataset.overrides_tsv)


class _EventInserter:
    """Inserts event blocks from a background thread while the generator runs.

    The embedded engine releases the GIL while it parses and merges, so on two cores the insert of
    one batch overlaps the generation of the next. Batches are large (few parts, few merges).
    """

    def __init__(self, cli: Any, database: str, batch_bytes: int = 64 << 20):
        self._cli, self._database, self._batch_bytes = cli, database, batch_bytes
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="seed-events-insert", daemon=True)
        self._thread.start()

    def put(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        batch: list[bytes] = []
        size = 0
        while True:
            block = self._queue.get()
            if block is not None:
                batch.append(block)
                size += len(block)
            if batch and (block is None or size >= self._batch_bytes):
                try:
                    if self._error is None:
                        _insert(self._cli, self._database, "events", EVENT_COLUMNS, batch)
                except BaseException as exc:  # re-raised in the generating thread
                    self._error = exc
                batch, size = [], 0
            if block is None:
                return


def write_postgres(dataset: Dataset, url: str, reset: bool = True) -> None:
    from runner.local import sources
    from runner.stores import pg_schema

    sources.init_posthog_person(url)
    with pg_schema.connect(url) as conn:
        if reset:
            conn.execute("TRUNCATE posthog_person RESTART IDENTITY")
        (base,) = conn.execute("SELECT coalesce(max(id), 0) FROM posthog_person").fetchone() or (0,)
        rows = dataset.pg_rows if not base else [(base + row[0], *row[1:]) for row in dataset.pg_rows]
        with conn.cursor() as cur:
            with cur.copy(f"COPY posthog_person ({', '.join(PG_PERSON_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('posthog_person', 'id'), "
                "(SELECT coalesce(max(id), 0) + 1 FROM posthog_person), false)"
            )


def _refuse_remote(cli: Any, pg_url: str) -> None:
    """Demo data replaces PostHog's tables: never write it to a shared server by accident."""
    if type(cli).__name__ != "ChdbClient":
        guard.refuse_remote_clickhouse(str(getattr(cli, "url", "")), "write demo data")
    guard.refuse_remote_postgres(pg_url, "write demo data")


@dataclass(frozen=True)
class SeedResult:
    seed: int
    team_ids: list[int]
    quiet_team_id: int | None
    persons: int
    events: int
    overrides: int
    lost_events: int
    start: str
    end: str
    bug_window_start: str
    bug_window_end: str
    lost_fraction: float
    source_database: str
    counts: dict[str, int]
    timings: dict[str, float]

    def dbt_vars(self) -> dict[str, str]:
        dbt_vars = {"bug_window_start": self.bug_window_start, "bug_window_end": self.bug_window_end}
        if self.source_database != settings.DEFAULT_SOURCE_DB:
            dbt_vars["source_database"] = self.source_database
        return dbt_vars

    def dbt_command(self) -> str:
        inner = ", ".join(f'{k}: "{v}"' for k, v in self.dbt_vars().items())
        return f"dbt run --project-dir . --profiles-dir profiles --vars '{{{inner}}}'"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dbt_vars": self.dbt_vars(), "dbt_command": self.dbt_command()}


def seed(
    teams: int,
    persons: int,
    events: int,
    seed: int,
    *,
    start: str = DEFAULT_START,
    days: int = DEFAULT_DAYS,
    bug_window_start: str = DEFAULT_BUG_WINDOW_START,
    bug_window_end: str = DEFAULT_BUG_WINDOW_END,
    lost_fraction: float = DEFAULT_LOST_FRACTION,
    reset: bool = True,
    clickhouse: Any = None,
    pg_url: str | None = None,
    source_database: str | None = None,
    allow_remote: bool = False,
) -> SeedResult:
    """Generate the demo dataset and write it to ClickHouse and Postgres.

    `clickhouse` is a clickhouse-connect client (default `warehouse.client()`); `pg_url` defaults to
    `PERSONS_DB_WRITER_URL` or the local stack. Both must be local (embedded ClickHouse or loopback
    hosts) unless `allow_remote`: seeding empties PostHog's tables.
    """
    from runner.stores import warehouse

    config = SeedConfig(
        teams=teams,
        persons=persons,
        events=events,
        seed=seed,
        start=start,
        days=days,
        bug_window_start=bug_window_start,
        bug_window_end=bug_window_end,
        lost_fraction=lost_fraction,
    )
    config.validate()
    database = source_database or settings.source_database()
    warehouse.ident(database)
    url = pg_url or settings.persons_db_url()
    assert url is not None
    cli = clickhouse or warehouse.client()
    if not allow_remote:
        _refuse_remote(cli, url)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    prepare_clickhouse(cli, database, reset)
    inserter = _EventInserter(cli, database)
    try:
        dataset = generate(config, event_sink=inserter.put)
    finally:
        inserter.close()
    timings["events_s"] = round(time.perf_counter() - started, 3)
    mark = time.perf_counter()
    _write_clickhouse_persons(dataset, cli, database)
    timings["clickhouse_persons_s"] = round(time.perf_counter() - mark, 3)
    mark = time.perf_counter()
    write_postgres(dataset, url, reset)
    timings["postgres_s"] = round(time.perf_counter() - mark, 3)
    timings["total_s"] = round(time.perf_counter() - started, 3)
    end = parse_time(config.start, "--start") + timedelta(days=config.days)
    return SeedResult(
        seed=seed,
        team_ids=dataset.team_ids,
        quiet_team_id=dataset.quiet_team_id,
        persons=dataset.counts["persons"],
        events=dataset.counts["events"],
        overrides=dataset.counts["overrides"],
        lost_events=dataset.counts["lost_events"],
        start=config.start,
        end=end.strftime(TIME_FORMAT),
        bug_window_start=config.bug_window_start,
        bug_window_end=config.bug_window_end,
        lost_fraction=config.lost_fraction,
        source_database=database,
        counts=dataset.counts,
        timings=timings,
    )


# --- fingerprints (determinism checks) -------------------------------------------------------------


def clickhouse_fingerprint(cli: Any, database: str | None = None) -> dict[str, tuple[int, int]]:
    """(row count, XOR of row hashes) per source table: equal for identical contents, any row order."""
    from runner.local import sources
    from runner.stores import warehouse

    db = warehouse.ident(database or settings.source_database())
    result = {}
    for table in sources.SOURCE_TABLES:
        rows = cli.query(
            f"SELECT count(), groupBitXor(cityHash64(tuple(*))) FROM {db}.{warehouse.ident(table)}"
        ).result_rows
        result[table] = (int(rows[0][0]), int(rows[0][1]))
    return result


def postgres_fingerprint(url: str) -> tuple[int, str]:
    """(row count, md5 over the ordered rows) of posthog_person."""
    from runner.stores import pg_schema

    with pg_schema.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        row = conn.execute(
            "SELECT count(*), coalesce(md5(string_agg(p::text, '|' ORDER BY p.id)), '') FROM ("
            f"SELECT {', '.join(PG_PERSON_COLUMNS)} FROM posthog_person) p"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


# --- command line ----------------------------------------------------------------------------------


def _summary(result: SeedResult) -> str:
    c = result.counts
    out = io.StringIO()
    out.write(
        f"seeded {result.source_database} (ClickHouse) and posthog_person (Postgres) "
        f"with seed {result.seed}\n"
    )
    quiet = (
        f" (team {result.quiet_team_id} has no property changes in the window)"
        if result.quiet_team_id
        else ""
    )
    out.write(
        f"  teams      {len(result.team_ids)}: ids {result.team_ids[0]}..{result.team_ids[-1]}{quiet}\n"
    )
    out.write(
        f"  persons    {result.persons} created, {c['merged_persons']} merged away, "
        f"{c['live_persons']} live in Postgres; "
        f"{c['deleted_persons']} deleted in ClickHouse, {c['missing_in_postgres']} missing in Postgres, "
        f"{c['null_version_in_postgres']} with NULL version, {c['history_rows']} with older ClickHouse rows\n"
    )
    out.write(
        f"  events     {result.events} from {result.start} to {result.end} (UTC); "
        f"{c['operation_events']} carry property operations; {c['malformed_events']} malformed, "
        f"{c['blocklisted_operations']} blocklisted keys, "
        f"{c['null_values']} null values\n"
    )
    out.write(
        f"  overrides  {result.overrides} rows; {c['deleted_overrides']} deleted, "
        f"{c['distinct_ids_overridden_twice']} distinct_ids overridden twice\n"
    )
    out.write(
        f"  bug window [{result.bug_window_start}, {result.bug_window_end}) UTC: "
        f"{c['window_events']} events, "
        f"{c['window_operation_events']} with operations, {result.lost_events} lost "
        f"(fraction {result.lost_fraction})\n"
    )
    out.write(f"  took       {result.timings['total_s']:.1f}s\n")
    out.write("next, compute the diff:\n")
    out.write(f"  {result.dbt_command()}\n")
    return out.getvalue()


@click.group("demo")
def demo() -> None:
    """Demo data: PostHog-shaped events, persons and overrides with a bug window of lost updates."""


@demo.command("seed")
@click.option(
    "--teams",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    envvar="RECON_DEMO_TEAMS",
    show_envvar=True,
    help="Number of teams (ids 1..N).",
)
@click.option(
    "--persons",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    envvar="RECON_DEMO_PERSONS",
    show_envvar=True,
    help="Persons in total over all teams, including those later merged away.",
)
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=300_000,
    show_default=True,
    envvar="RECON_DEMO_EVENTS",
    show_envvar=True,
    help="Events in total.",
)
@click.option(
    "--seed",
    "seed_",
    type=int,
    default=42,
    show_default=True,
    envvar="RECON_DEMO_SEED",
    show_envvar=True,
    help="Random seed: the same seed writes identical tables.",
)
@click.option(
    "--start",
    default=DEFAULT_START,
    show_default=True,
    envvar="RECON_DEMO_START",
    show_envvar=True,
    help="First possible event time, UTC (a fixed anchor: the data never depends on the clock).",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=DEFAULT_DAYS,
    show_default=True,
    envvar="RECON_DEMO_DAYS",
    show_envvar=True,
    help="Days of events from --start.",
)
@click.option(
    "--bug-window-start",
    default=DEFAULT_BUG_WINDOW_START,
    show_default=True,
    envvar="RECON_DEMO_BUG_WINDOW_START",
    show_envvar=True,
    help="Start of the bug window, UTC.",
)
@click.option(
    "--bug-window-end",
    default=DEFAULT_BUG_WINDOW_END,
    show_default=True,
    envvar="RECON_DEMO_BUG_WINDOW_END",
    show_envvar=True,
    help="End of the bug window (exclusive), UTC.",
)
@click.option(
    "--lost-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_LOST_FRACTION,
    show_default=True,
    envvar="RECON_DEMO_LOST_FRACTION",
    show_envvar=True,
    help="Fraction of the window's property-changing events whose updates were lost.",
)
@click.option(
    "--reset/--no-reset",
    default=True,
    show_default=True,
    envvar="RECON_DEMO_RESET",
    show_envvar=True,
    help="Empty events, person, person_distinct_id_overrides and posthog_person first.",
)
@click.option(
    "--source-database",
    default=settings.DEFAULT_SOURCE_DB,
    show_default=True,
    envvar=settings.ENV_SOURCE_DB,
    show_envvar=True,
    help="ClickHouse database of PostHog's tables (the dbt var source_database).",
)
@click.option(
    "--allow-remote",
    is_flag=True,
    default=False,
    envvar="RECON_DEMO_ALLOW_REMOTE",
    show_envvar=True,
    help="Write even when ClickHouse or Postgres is not local (seeding empties PostHog's tables).",
)
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="`json` prints one machine-readable object and nothing else on stdout.",
)
def seed_cmd(
    teams: int,
    persons: int,
    events: int,
    seed_: int,
    start: str,
    days: int,
    bug_window_start: str,
    bug_window_end: str,
    lost_fraction: float,
    reset: bool,
    source_database: str,
    allow_remote: bool,
    output: str,
) -> None:
    """Write deterministic demo data to ClickHouse (events, person, overrides) and Postgres (posthog_person).

    Prints a summary and the `dbt run` line that computes the diff for the bug window.
    """
    log.info("seeding %d teams, %d persons, %d events (seed %d)", teams, persons, events, seed_)
    result = seed(
        teams,
        persons,
        events,
        seed_,
        start=start,
        days=days,
        bug_window_start=bug_window_start,
        bug_window_end=bug_window_end,
        lost_fraction=lost_fraction,
        reset=reset,
        source_database=source_database,
        allow_remote=allow_remote,
    )
    if output == "json":
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(_summary(result), nl=False)
