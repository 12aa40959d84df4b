"""The semantics of property operations (spec R5.4, R5.6), pure: what one event's `properties` carry and
how they change a person. The generator uses them to compute the true and the stored state; the tests
use them to check what was written.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

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
