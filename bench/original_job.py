"""The original job's way of computing the diff, re-expressed from the spec, as a benchmark baseline.

Not recon's code path: written from `reconciliation-semantics.md` only, to measure in the same run
what the job the models replace would cost on the same data.

- Single pass (section 6): per discovered team, one query that extracts the operations (R5.4-R5.6)
  with the person resolved through the live overrides (R5.3), aggregates them per person, key and kind
  with argMax/argMin (R5.7, the illustration of R5.8), joins the current state (R2.2) and keeps the
  R6.4 differences; the rows are fetched and the conflict filter (section 7) runs in Python.
- Windowed batched mode (R8.8-R8.9): per discovered team, the step-1 query (the same diff bounded by
  W1, person ids only), then per batch of `person_batch_size` persons, one aggregation query per
  window from W0 to now restricted to the batch's resolved persons, merged in a Python accumulator
  (R8.3), then the batch's states fetched and compared in Python with decoded equality (R8.5-R8.6),
  then section 7. The batch's ids go to ClickHouse through a temporary table (gotcha 32).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

BLOCKLIST = (
    "$current_url $pathname $referring_domain $referrer $screen_height $screen_width $viewport_height "
    "$viewport_width $browser $browser_version $device_type $raw_user_agent $os $os_name $os_version "
    "$geoip_postal_code $geoip_time_zone $geoip_latitude $geoip_longitude $geoip_accuracy_radius "
    "$geoip_subdivision_1_code $geoip_subdivision_1_name $geoip_subdivision_2_code $geoip_subdivision_2_name "
    "$geoip_subdivision_3_code $geoip_subdivision_3_name $geoip_city_confidence $geoip_country_confidence "
    "$geoip_postal_code_confidence $geoip_subdivision_1_confidence $geoip_subdivision_2_confidence"
).split()
_BLOCKLIST_SQL = "[" + ", ".join(f"'{k}'" for k in BLOCKLIST) + "]"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _ts(text: str) -> str:
    return f"toDateTime64('{text}', 6, 'UTC')"


def _operations(db: str, team: int, start: str, end: str, person_filter: str = "") -> str:
    """R5.2-R5.6 and R5.3 for one team and [start, end): one row per operation."""
    return f"""
        select
            if(o.distinct_id != '', o.person_id, e.person_id) as person,
            op.1 as kind, op.2 as key, op.3 as value, e.timestamp as ts
        from {db}.events as e
        left join (
            select distinct_id, argMax(person_id, version) as person_id
            from {db}.person_distinct_id_overrides where team_id = {team}
            group by distinct_id having argMax(is_deleted, version) = 0
        ) as o on e.distinct_id = o.distinct_id
        array join arrayConcat(
            arrayMap(kv -> tuple('set', kv.1, kv.2), JSONExtractKeysAndValuesRaw(e.properties, '$set')),
            arrayMap(kv -> tuple('set_once', kv.1, kv.2),
                     JSONExtractKeysAndValuesRaw(e.properties, '$set_once')),
            arrayMap(k -> tuple('unset', if(startsWith(k, '"'), JSONExtractString(k), k), ''),
                     JSONExtractArrayRaw(e.properties, '$unset'))
        ) as op
        where e.team_id = {team} and e.timestamp >= {_ts(start)} and e.timestamp < {_ts(end)}
            and (JSONExtractString(e.properties, '$set') != ''
                 or JSONExtractString(e.properties, '$set_once') != ''
                 or JSONLength(e.properties, '$unset') > 0)
            and op.3 != 'null' and not has({_BLOCKLIST_SQL}, op.2)
            {person_filter}
    """


def _aggregated(db: str, team: int, start: str, end: str, person_filter: str = "") -> str:
    """R5.7 / R5.8: per person, key and kind, the latest SET / earliest SET_ONCE / latest UNSET."""
    return f"""
        select person, key, kind,
            if(kind = 'set_once', argMin(value, ts), argMax(value, ts)) as value,
            if(kind = 'set_once', min(ts), max(ts)) as at
        from ({_operations(db, team, start, end, person_filter)})
        group by person, key, kind
    """


def _state(db: str, team: int, person_filter: str = "") -> str:
    """R2.2: the current state of live persons."""
    return f"""
        select id, argMax(properties, version) as props, max(version) as v
        from {db}.person where team_id = {team} {person_filter}
        group by id having argMax(is_deleted, version) = 0
    """


def _diff_query(db: str, team: int, start: str, end: str) -> str:
    """Section 6 in one query: R6.4 differences per person (raw-text SET comparison)."""
    return f"""
        select a.person, any(s.v),
            groupArrayIf(tuple(a.key, a.value, a.at),
                         a.kind = 'set' and JSONHas(s.props, a.key)
                         and JSONExtractRaw(s.props, a.key) != a.value),
            groupArrayIf(tuple(a.key, a.value, a.at), a.kind = 'set_once' and not JSONHas(s.props, a.key)),
            groupArrayIf(tuple(a.key, a.at), a.kind = 'unset' and JSONHas(s.props, a.key))
        from ({_aggregated(db, team, start, end)}) as a
        inner join ({_state(db, team)}) as s on a.person = s.id
        group by a.person
        having length(groupArrayIf(1, a.kind = 'set' and JSONHas(s.props, a.key)
                                   and JSONExtractRaw(s.props, a.key) != a.value))
             + length(groupArrayIf(1, a.kind = 'set_once' and not JSONHas(s.props, a.key)))
             + length(groupArrayIf(1, a.kind = 'unset' and JSONHas(s.props, a.key))) > 0
        order by a.person
    """


def conflict_filter(sets: dict, set_onces: dict, unsets: dict) -> tuple[dict, dict, dict]:
    """Section 7 (R7.1, R7.2) on maps key -> (value, at) / key -> at."""
    sets, set_onces, kept_unsets = dict(sets), dict(set_onces), dict(unsets)
    for key, unset_at in unsets.items():
        if key in sets:
            if sets[key][1] > unset_at:
                kept_unsets.pop(key, None)
            else:
                sets.pop(key)
        if key in set_onces:
            if set_onces[key][1] > unset_at:
                kept_unsets.pop(key, None)
            else:
                set_onces.pop(key)
    return sets, set_onces, kept_unsets


def discover(cli: Any, db: str, w0: str, w1: str) -> list[int]:
    """R4.1."""
    return [
        row[0]
        for row in cli.query(
            f"select distinct team_id from {db}.events "
            f"where timestamp >= {_ts(w0)} and timestamp < {_ts(w1)} "
            "and (JSONHas(properties, '$set') or JSONHas(properties, '$set_once') "
            "or JSONHas(properties, '$unset')) order by team_id"
        ).result_rows
    ]


def single_pass(cli: Any, db: str, w0: str, w1: str, now: str) -> int:
    """Section 6 for every discovered team; returns the number of persons with a diff."""
    persons = 0
    for team in discover(cli, db, w0, w1):
        for _person, _version, sets, set_onces, unsets in cli.query(
            _diff_query(db, team, w0, now)
        ).result_rows:
            kept = conflict_filter(
                {k: (v, t) for k, v, t in sets}, {k: (v, t) for k, v, t in set_onces}, dict(unsets)
            )
            persons += any(kept)
    return persons


def _windows(w0: str, now: str, seconds: int) -> list[tuple[str, str]]:
    """R8.1."""
    start, end = datetime.strptime(w0, TIME_FORMAT), datetime.strptime(now, TIME_FORMAT)
    out = []
    while start < end:
        stop = min(start + timedelta(seconds=seconds), end)
        out.append((start.strftime(TIME_FORMAT), stop.strftime(TIME_FORMAT)))
        start = stop
    return out


def windowed(cli: Any, db: str, w0: str, w1: str, now: str, seconds: int, batch_size: int = 10_000) -> int:
    """R8.8-R8.9 for every discovered team; returns the number of persons with a diff."""
    persons = 0
    cli.command("create temporary table if not exists recon_bench_batch (id UUID) engine = Memory")
    windows = _windows(w0, now, seconds)
    for team in discover(cli, db, w0, w1):
        step1 = [row[0] for row in cli.query(_diff_query(db, team, w0, w1)).result_rows]
        for offset in range(0, len(step1), batch_size):
            batch = step1[offset : offset + batch_size]
            cli.command("truncate table recon_bench_batch")
            cli.insert("recon_bench_batch", [[p] for p in batch], column_names=["id"])
            accumulator: dict[Any, dict[str, dict[str, tuple]]] = {}
            in_batch = (
                "and if(o.distinct_id != '', o.person_id, e.person_id) in (select id from recon_bench_batch)"
            )
            for start, end in windows:
                rows = cli.query(_aggregated(db, team, start, end, in_batch)).result_rows
                for person, key, kind, value, at in rows:  # R8.3
                    kinds = accumulator.setdefault(person, {"set": {}, "set_once": {}, "unset": {}})
                    existing = kinds[kind].get(key)
                    if (
                        existing is None
                        or (kind in ("set", "unset") and at > existing[1])
                        or (kind == "set_once" and at < existing[1])
                    ):
                        kinds[kind][key] = (value, at)
            states = cli.query(_state(db, team, "and id in (select id from recon_bench_batch)")).result_rows
            for person, props, _version in states:  # R8.5-R8.6
                if person not in accumulator:
                    continue
                state = json.loads(props or "{}")
                kinds = accumulator[person]
                sets = {
                    k: (v, t)
                    for k, (v, t) in kinds["set"].items()
                    if k in state and json.loads(v) != state[k]
                }
                set_onces = {k: (v, t) for k, (v, t) in kinds["set_once"].items() if k not in state}
                unsets = {k: t for k, (_, t) in kinds["unset"].items() if k in state}
                persons += any(conflict_filter(sets, set_onces, unsets))
    return persons
