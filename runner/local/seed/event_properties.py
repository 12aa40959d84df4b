"""What the events carry, pure: pools of property values (strings, some empty or non-ASCII, numbers,
booleans, arrays, nested objects), the `$set`/`$set_once`/`$unset` members of an event that changes a
person, the fixed pieces of ordinary events' properties, and the ways `properties` arrive malformed.

Every choice is drawn from the `random.Random` passed in, in a fixed order, so a seed gives the same text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from runner.local.seed.semantics import BLOCKLIST, SET, SET_ONCE, UNSET, Operation

_NULL_VALUE_RATE = 0.04


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
ORDINARY_EVENTS = _expand(
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
OPS_EVENTS = _expand([("$identify", 3), ("$set", 3), ("$pageview", 2), ("signed_up", 1), ("plan_changed", 1)])
ELEMENTS_CHAIN = (
    'button.btn.btn-primary:attr__class="btn btn-primary"nth-child="2"nth-of-type="1"text="Sign up"'
)


# Ordinary event properties: a prefix and a suffix from fixed pools around a per-person session id.
PREFIXES = [
    f'{{"$current_url":"https://app.example.com/{path}","$pathname":"/{path}","$browser":"{browser}",'
    f'"$browser_version":{120 + (i % 12)},"$os":"{os_}","$device_type":"{device}",'
    for i, (path, browser, os_, device) in enumerate(
        (p, b, o, d) for p in _PATHS for b in _BROWSERS for o in _OSES for d in _DEVICES
    )
]
SUFFIXES = [
    f'"$lib":"web","$lib_version":"1.{version}.0","$geoip_country_name":"{country}","amount":'
    for version in range(150, 170)
    for country in _COUNTRIES
]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def operations_text(rng: random.Random, person: int, counts: dict[str, int]) -> tuple[str, list[Operation]]:
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


def malform(rng: random.Random, text: str) -> str:
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
