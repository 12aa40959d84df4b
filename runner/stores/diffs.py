"""Reading the diff the models computed, and the historic person state the three-way merge needs.

Everything is bound as query parameters (clickhouse-connect binds server-side, chDB included), so
person lists travel as array parameters, never as SQL text: no `max_query_size` trouble (gotcha 32).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

from clickhouse_connect.driver.client import Client

from runner.config.settings import ConfigError
from runner.rules.merge import Entries, LazyMap, PersonDiff, decode_entries, json_loads, unstorable
from runner.stores.warehouse import ident

DIFF_TABLE = "person_property_diff"
SUMMARY_TABLE = "person_property_diff_summary"


_ISO_T = "concat(replaceOne(formatDateTime(t, '%Y-%m-%dT%H:%i:%S.%f', 'UTC'), '.000000', ''), '+00:00')"


def _iso(column: str) -> str:
    """R9.7 text of each timestamp of an array column (see runner.rules.merge)."""
    return f"arrayMap(t -> {_ISO_T}, {column})"


def _operations(prefix: str, operation: str) -> str:
    value = "v" if operation != "unset" else "'null'"
    args = (
        f"{prefix}_keys, {prefix}_values, {prefix}_timestamps"
        if operation != "unset"
        else (f"{prefix}_keys, {prefix}_timestamps")
    )
    params = "(k, v, t)" if operation != "unset" else "(k, t)"
    return (
        f"arrayMap({params} -> concat('{{\"key\": ', toJSONString(k), ', \"value\": ', {value}, "
        f'\', "timestamp": "\', {_ISO_T}, \'", "operation": "{operation}"}}\'), {args})'
    )


def _keys_values(prefix: str) -> str:
    # Values are raw JSON text: concatenated they form a JSON array, decoded with everything else at once.
    return (
        f"toJSONString({prefix}_keys), ',[', arrayStringConcat({prefix}_values, ','), '],', "
        f"toJSONString({_iso(prefix + '_timestamps')})"
    )


def _value_map(prefix: str) -> str:
    """The SET (or SET_ONCE) entries as one JSON object text of ClickHouse's raw value texts."""
    return (
        f"concat('{{', arrayStringConcat(arrayMap((k, v) -> concat(toJSONString(k), ': ', v), "
        f"{prefix}_keys, {prefix}_values), ', '), '}}')"
    )


def _copy(text: str) -> str:
    """A text in COPY's text format, as `runner.stores.persons.copy_text` writes it."""
    return (
        f"replaceAll(replaceAll(replaceAll(replaceAll({text}, '\\\\', '\\\\\\\\'), "
        "'\\n', '\\\\n'), '\\r', '\\\\r'), '\\t', '\\\\t')"
    )


def _metadata_maps(prefix: str, operation: str) -> str:
    """The SET (or SET_ONCE) keys' R9.7 timestamps and operation, as two JSON object texts (COPY text,
    tab-separated)."""
    timestamps = (
        f"concat('{{', arrayStringConcat(arrayMap((k, t) -> concat(toJSONString(k), ': \"', {_ISO_T}, "
        f"'\"'), {prefix}_keys, {prefix}_timestamps), ', '), '}}')"
    )
    operations = (
        f"concat('{{', arrayStringConcat(arrayMap(k -> concat(toJSONString(k), ': \"{operation}\"'), "
        f"{prefix}_keys), ', '), '}}')"
    )
    return f"{_copy(timestamps)}, '\\t', {_copy(operations)}"


_PENDING = (
    f"concat('[', arrayStringConcat(arrayConcat({_operations('set', 'set')}, "
    f"{_operations('set_once', 'set_once')}, {_operations('unset', 'unset')}), ', '), ']')"
)
# The UNSET keys as a text[] literal, every element quoted (`runner.stores.persons.text_array`).
_UNSET_ARRAY = (
    "concat('{', arrayStringConcat(arrayMap(k -> concat('\"', replaceAll(replaceAll(k, '\\\\', "
    "'\\\\\\\\'), '\"', '\\\\\"'), '\"'), unset_keys), ','), '}')"
)
# The set-based write's staged row without its position (`runner.stores.apply_sets`), in COPY text:
# uuid, baseline, then per SET and SET_ONCE the value map, timestamps and operations, the UNSET keys and
# pending_operations.
_STAGE_LINE = (
    "concat(toString(person_id), '\\t', toString(baseline_version), '\\t', "
    f"{_copy(_value_map('set'))}, '\\t', {_metadata_maps('set', 'set')}, '\\t', "
    f"{_copy(_value_map('set_once'))}, '\\t', {_metadata_maps('set_once', 'set_once')}, '\\t', "
    f"{_copy(_UNSET_ARRAY)}, '\\t', {_copy(_PENDING)})"
)

# Per person: one JSON text [set keys, values, times, set_once keys, values, times, unset keys, times],
# the backup's pending_operations (R9.9) as JSON text, raw values included, the SET and SET_ONCE maps
# of raw value texts, and the set-based write's staged row.
# Last, whether the diff is plain (`PersonDiff.plain`): no key both set (or set once) and unset, every
# value a JSON text of its own (then the entries decode: a value like `1],[2` would shift them), arrays
# of matching lengths, and no escape sequence and no NUL (what the reader would otherwise look into).
_DIFF_COLUMNS = (
    "batch_index, person_id, baseline_version, "
    f"concat('[', {_keys_values('set')}, ',', {_keys_values('set_once')}, ',', "
    f"toJSONString(unset_keys), ',', toJSONString({_iso('unset_timestamps')}), ']') AS recon_entries, "
    f"{_PENDING}, {_value_map('set')}, {_value_map('set_once')}, {_STAGE_LINE}, "
    "NOT hasAny(set_keys, unset_keys) AND NOT hasAny(set_once_keys, unset_keys) "
    "AND position(recon_entries, '\\\\u') = 0 AND position(recon_entries, char(0)) = 0 "
    "AND arrayAll(v -> isValidJSON(v), set_values) AND arrayAll(v -> isValidJSON(v), set_once_values) "
    "AND length(set_keys) = length(set_values) AND length(set_keys) = length(set_timestamps) "
    "AND length(set_once_keys) = length(set_once_values) "
    "AND length(set_once_keys) = length(set_once_timestamps) "
    "AND length(unset_keys) = length(unset_timestamps)"
)


@dataclass(frozen=True, slots=True)
class TeamSummary:
    team_id: int
    persons_with_diff: int
    mode: str
    invocation_id: str
    semantics: str = "original"  # the build's `semantics` var (summaries built before it: original)


def _table_exists(client: Client, schema: str, table: str) -> bool:
    rows = client.query(
        "SELECT count() FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": schema, "t": table},
    ).result_rows
    return bool(rows and rows[0][0])


def read_team_summaries(client: Client, schema: str) -> list[TeamSummary]:
    """The teams the models selected (one row per team, teams with nothing to change included)."""
    for table in (SUMMARY_TABLE, DIFF_TABLE):
        if not _table_exists(client, schema, table):
            raise ConfigError(
                f"{schema}.{table} does not exist: compute the diff first (dbt run with the bug window vars)"
            )
    has_semantics = client.query(
        "SELECT count() FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "AND name = 'semantics'",
        parameters={"db": schema, "t": SUMMARY_TABLE},
    ).result_rows[0][0]
    semantics = "any(semantics)" if has_semantics else "'original'"
    rows = client.query(
        f"""
        SELECT team_id, max(persons_with_diff), any(mode), any(invocation_id), {semantics}
        FROM {ident(schema)}.{ident(SUMMARY_TABLE)}
        GROUP BY team_id
        ORDER BY team_id
        """
    ).result_rows
    return [TeamSummary(int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]


def iter_team_diffs(client: Client, schema: str, team_id: int, page_size: int) -> Iterator[PersonDiff]:
    """A team's diffs in processing order (batch_index, person_id), one keyset page at a time."""
    table = f"{ident(schema)}.{ident(DIFF_TABLE)}"
    first = (
        f"SELECT {_DIFF_COLUMNS} FROM {table} WHERE team_id = {{team:Int64}} "
        f"ORDER BY batch_index, person_id LIMIT {{n:UInt32}}"
    )
    following = (
        f"SELECT {_DIFF_COLUMNS} FROM {table} WHERE team_id = {{team:Int64}} "
        f"AND (batch_index > {{b:UInt32}} OR (batch_index = {{b:UInt32}} AND person_id > {{p:UUID}})) "
        f"ORDER BY batch_index, person_id LIMIT {{n:UInt32}}"
    )
    params: dict[str, Any] = {"team": team_id, "n": page_size}
    sql = first
    while True:
        rows = client.query(sql, parameters=params).result_rows
        for row in rows:
            yield _diff_from_row(team_id, row)
        if len(rows) < page_size:
            return
        params = {"team": team_id, "n": page_size, "b": rows[-1][0], "p": rows[-1][1]}
        sql = following


def _diff_from_row(team_id: int, row: Sequence[Any]) -> PersonDiff:
    """A person's diff; one Postgres cannot take (invalid JSON, a NUL character...) is marked `invalid`
    so that the person fails alone. A plain diff's entries are decoded only when asked (`Entries`)."""
    batch_index, person_id, baseline, entries, operations, set_json, set_once_json, stage_line, plain = row
    person = person_id if isinstance(person_id, UUID) else UUID(str(person_id))
    maps: tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]]
    if plain:
        lazy = Entries(entries)
        maps = (LazyMap(lazy, 0), LazyMap(lazy, 1), LazyMap(lazy, 2))
    else:
        try:
            maps = decode_entries(entries)
        except ValueError:
            return PersonDiff(
                team_id,
                person,
                int(baseline),
                batch_index=int(batch_index),
                invalid="a diff value is not valid JSON",
            )
    diff = PersonDiff(
        team_id,
        person,
        int(baseline),
        maps[0],
        maps[1],
        maps[2],
        int(batch_index),
        operations,
        set_json,
        set_once_json,
        stage_line=stage_line,
        plain=bool(plain),
    )
    # Only a text with an escape sequence or a NUL can hold a value or key Postgres refuses.
    if not plain and ("\\u" in entries or "\x00" in entries):
        reason = unstorable(diff)
        if reason is not None:
            return replace(diff, invalid=reason)  # entries kept: the person's line shows them
    return diff


def historic_properties(
    client: Client, source_db: str, team_id: int, minimum_versions: Sequence[tuple[UUID, int]]
) -> dict[UUID, dict[str, Any]]:
    """R2.3 for a batch in one query: per person, the properties of its lowest ClickHouse version at or
    above the given minimum (no is_deleted filter; empty text is `{}`). Persons without such a row are
    absent from the result."""
    if not minimum_versions:
        return {}
    ids = [uuid for uuid, _ in minimum_versions]
    versions = [int(v) for _, v in minimum_versions]
    rows = client.query(
        f"""
        SELECT p.id, argMin(p.properties, p.version)
        FROM {ident(source_db)}.person AS p
        INNER JOIN (
            SELECT tupleElement(pair, 1) AS id, tupleElement(pair, 2) AS min_version
            FROM (SELECT arrayJoin(arrayZip({{ids:Array(UUID)}}, {{versions:Array(UInt64)}})) AS pair)
        ) AS wanted ON p.id = wanted.id
        WHERE p.team_id = {{team:Int64}}
          AND p.id IN (SELECT arrayJoin({{ids:Array(UUID)}}))
          AND p.version >= wanted.min_version
        GROUP BY p.id
        """,
        parameters={"team": team_id, "ids": ids, "versions": versions},
    ).result_rows
    out: dict[UUID, dict[str, Any]] = {}
    for person_id, text in rows:
        uuid = person_id if isinstance(person_id, UUID) else UUID(str(person_id))
        parsed = json_loads(text) if text else {}
        if not isinstance(parsed, dict):
            raise ValueError(f"team {team_id} person {uuid}: ClickHouse properties are not a JSON object")
        out[uuid] = parsed
    return out
