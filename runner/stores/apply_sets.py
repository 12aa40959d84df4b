"""Apply's set-based path (issue 22): a chunk of diffs locked, decided, written, backed up and put in the
outbox by ONE statement, with no per-person Python on the happy path.

The chunk's diffs are COPied into a temporary table as the texts ClickHouse wrote (the SET and SET_ONCE
maps of raw value texts, the R9.7 timestamps, the UNSET keys, pending_operations). One statement then
- locks the chunk's rows (`FOR UPDATE OF p SKIP LOCKED`, in primary-key order, as `lock_persons`);
- decides R9.4 on jsonb for the rows still at the diff's baseline version (NULL counting as 0), as
  `runner.rules.merge.simple_merge`: SET_ONCE only for keys the row lacks, SET only where the value
  differs (jsonb `=`) from the row after SET_ONCE, UNSET only of present keys, which also leaves both
  metadata maps; the version rule of `runner.rules.apply.version_after`;
- updates the rows whose merge changes something, still at the version read;
- writes from the rows it changed the backups (BEFORE columns straight from the locked rows), the
  outbox rows with their Kafka messages (built from the jsonb Postgres then holds) and the chunk's
  outbox batch, exactly as `runner.stores.persons.write_chunk` does;
- returns counts, the positions of the persons it settled (updated, unchanged, NULL version, lost)
  and, lazily, the messages and the before/after texts a sink asked for.

What it leaves to the caller (the exceptions, on the per-person path of `runner.engine.deciding` in
the same transaction): rows it could not lock (missing, or held by another transaction), rows whose
version moved past the baseline (three-way merge: ClickHouse's history, Python equality), and, when
Postgres refuses a value of the chunk, the whole chunk (`write_set` returns None after rolling back to
its savepoint; the per-person path then writes it, person by person if need be). The caller owns the
transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

import psycopg

from runner.rules.merge import PersonDiff, pending_operations_json
from runner.stores.persons import (
    PAYLOAD_SQL,
    PERSON_ERRORS,
    WRITTEN_SQL,
    OutboxBatch,
    copy_text,
    text_array,
)

STAGE_TABLE = "recon_apply_stage"
STAGE_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} (
    ord integer NOT NULL,
    uuid uuid NOT NULL,
    baseline bigint NOT NULL,
    set_map jsonb NOT NULL,
    set_ts jsonb NOT NULL,
    set_op jsonb NOT NULL,
    set_once_map jsonb NOT NULL,
    set_once_ts jsonb NOT NULL,
    set_once_op jsonb NOT NULL,
    unset_keys text[] NOT NULL,
    pending_operations jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""
_STAGE_COLUMNS = (
    "ord, uuid, baseline, set_map, set_ts, set_op, set_once_map, set_once_ts, set_once_op, unset_keys, "
    "pending_operations"
)

_OBJECT = "(CASE WHEN jsonb_typeof({c}) = 'object' THEN {c} ELSE '{{}}'::jsonb END)"

# The payload expression of runner.stores.persons, over the `updated` CTE's columns.
_PAYLOAD = PAYLOAD_SQL.replace("chunk.", "c.")

_SET_SQL = f"""
WITH locked AS MATERIALIZED (
    SELECT s.ord, s.baseline, s.set_map, s.set_ts, s.set_op, s.set_once_map, s.set_once_ts, s.set_once_op,
           s.unset_keys, s.pending_operations,
           p.id, p.uuid, p.team_id, p.version, p.properties, p.properties_last_updated_at,
           p.properties_last_operation, p.is_identified, p.created_at, p.is_user_id
    FROM {STAGE_TABLE} s
    JOIN posthog_person p ON p.team_id = %(team)s AND p.uuid = s.uuid
    ORDER BY p.id
    FOR UPDATE OF p SKIP LOCKED
),
changes AS MATERIALIZED (
    SELECT d.*,
           (d.props - d.removed) || (d.set_once_map - d.once_skip) || (d.set_map - d.set_skip)
               AS properties_after,
           ({_OBJECT.format(c="d.properties_last_updated_at")} - d.removed)
               || (d.set_once_ts - d.once_skip) || (d.set_ts - d.set_skip) AS updated_at_after,
           ({_OBJECT.format(c="d.properties_last_operation")} - d.removed)
               || (d.set_once_op - d.once_skip) || (d.set_op - d.set_skip) AS operation_after,
           (cardinality(d.removed) > 0 OR (d.set_once_map - d.once_skip) <> '{{}}'::jsonb
            OR (d.set_map - d.set_skip) <> '{{}}'::jsonb) AS changed
    FROM (
        SELECT l.*, b.props,
               -- SET_ONCE keys the row already has (null-valued keys included): not written
               ARRAY(SELECT k FROM jsonb_object_keys(l.set_once_map) k WHERE b.props ? k) AS once_skip,
               -- SET keys whose value the row holds after SET_ONCE (jsonb equality): not written
               ARRAY(SELECT e.key FROM jsonb_each(l.set_map) e
                     WHERE (CASE WHEN b.props ? e.key THEN b.props -> e.key
                                 ELSE l.set_once_map -> e.key END) = e.value) AS set_skip,
               -- UNSET keys the row has: removed (from both metadata maps too)
               ARRAY(SELECT k FROM unnest(l.unset_keys) k WHERE b.props ? k) AS removed,
               GREATEST(COALESCE(l.version, 0), l.baseline) + 1 AS version_after
        FROM locked l
        CROSS JOIN LATERAL (SELECT {_OBJECT.format(c="l.properties")} AS props) b
        WHERE COALESCE(l.version, 0) = l.baseline
        OFFSET 0  -- kept as a subquery: each array is computed once, not once per reference
    ) d
),
updated AS (
    UPDATE posthog_person p
    SET properties = c.properties_after,
        properties_last_updated_at = c.updated_at_after,
        properties_last_operation = c.operation_after,
        version = c.version_after
    FROM changes c
    WHERE c.changed AND p.team_id = %(team)s AND p.id = c.id AND p.version IS NOT DISTINCT FROM c.version
    RETURNING c.ord, c.id, c.uuid, c.team_id, c.version, c.version_after, c.properties,
              c.properties_last_updated_at, c.properties_last_operation, c.is_identified, c.created_at,
              c.is_user_id, c.pending_operations, c.properties_after, c.updated_at_after,
              c.operation_after, {_PAYLOAD} AS payload
),
{WRITTEN_SQL},
details AS (
    -- as the per-person path shows them: properties that are not an object show as {{}}; the texts are
    -- made only for the rows asked for
    SELECT ord, props::text AS before,
           CASE WHEN changed THEN properties_after::text ELSE props::text END AS after
    FROM (
        SELECT ord, props, properties_after, changed FROM changes
        WHERE changed OR %(all_details)s
        ORDER BY ord
        LIMIT %(details)s
    ) asked
)
SELECT (SELECT count(*) FROM backup), (SELECT count(*) FROM updated),
       (SELECT id FROM batch), (SELECT first_id FROM batch), (SELECT last_id FROM batch),
       (SELECT messages FROM batch),
       (SELECT array_agg(ord) FROM updated),
       (SELECT array_agg(ord) FROM changes WHERE NOT changed),
       (SELECT array_agg(ord) FROM changes WHERE version IS NULL),
       CASE WHEN (SELECT count(*) FROM updated) < (SELECT count(*) FROM changes WHERE changed) THEN
           (SELECT array_agg(ord) FROM changes WHERE changed AND id NOT IN (SELECT id FROM updated)) END,
       CASE WHEN %(keep)s THEN (SELECT array_agg(person_uuid::text ORDER BY id) FROM outbox) END,
       CASE WHEN %(keep)s THEN (SELECT array_agg(payload ORDER BY id) FROM outbox) END,
       (SELECT array_agg(ord ORDER BY ord) FROM details),
       (SELECT array_agg(before ORDER BY ord) FROM details),
       (SELECT array_agg(after ORDER BY ord) FROM details)
"""


@dataclass(slots=True)
class SetWritten:
    """What the statement settled, by the persons' positions in the staged list: `updated` (written,
    with backups and outbox rows), `unchanged` (the merge changes nothing; its row lock is kept until
    the batch ends), `null_version` (of those two, the rows whose version was NULL), `lost` (changed
    between lock and update: not written). Every other position is the caller's. `details`: position ->
    (properties before, after) as jsonb texts, for the positions a sink asked for."""

    backups: int = 0
    updated: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    null_version: set[int] = field(default_factory=set)
    lost: list[int] = field(default_factory=list)
    outbox: list[OutboxBatch] = field(default_factory=list)
    details: dict[int, tuple[str, str]] = field(default_factory=dict)


def _key_map(keys: Sequence[str], values: Sequence[str]) -> str:
    """A JSON object of keys to strings, as json.dumps writes it (ASCII-escaped), without a dict."""
    if not keys:
        return "{}"
    pairs = (f"{k}: {encode_basestring_ascii(v)}" for k, v in zip(keys, values, strict=True))
    return "{" + ", ".join(pairs) + "}"


def _map_texts(entries: Mapping[str, tuple[Any, str]], operation: str) -> tuple[list[str], str, str]:
    keys = [encode_basestring_ascii(k) for k in entries]
    timestamps = _key_map(keys, [ts for _, ts in entries.values()])
    op = encode_basestring_ascii(operation)
    operations = "{" + ", ".join(f"{k}: {op}" for k in keys) + "}" if keys else "{}"
    return keys, timestamps, operations


def built_stage_line(d: PersonDiff, backup: bool) -> str:
    """A diff's staged row (COPY text, without its position) built from its decoded entries: for diffs
    the conflict filter changed, or without backups (no pending_operations)."""
    set_json, set_once_json = d.value_maps()
    _, set_ts, set_op = _map_texts(d.set, "set")
    _, once_ts, once_op = _map_texts(d.set_once, "set_once")
    unset = text_array(list(d.unset)) or "{}"
    pending = pending_operations_json(d) if backup else "[]"
    return (
        f"{d.person_uuid}\t{d.baseline_version}\t{copy_text(set_json)}\t{copy_text(set_ts)}\t"
        f"{copy_text(set_op)}\t{copy_text(set_once_json)}\t{copy_text(once_ts)}\t{copy_text(once_op)}\t"
        f"{copy_text(unset)}\t{copy_text(pending)}"
    )


def _stage_lines(diffs: Sequence[PersonDiff], backup: bool) -> Iterator[str]:
    lines: list[str] = []
    for ord_, d in enumerate(diffs):
        # As ClickHouse built it (runner.stores.diffs), else from the decoded entries.
        line = d.stage_line if d.stage_line is not None and backup else built_stage_line(d, backup)
        lines.append(f"{ord_}\t{line}\n")
        if len(lines) == 1000:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


def write_set(
    conn: psycopg.Connection,
    job_id: str,
    team_id: int,
    diffs: Sequence[PersonDiff],
    *,
    backup: bool,
    keep_messages: bool,
    details: int | None,
) -> SetWritten | None:
    """Lock, decide and write the persons of `diffs` that are at their baseline version, in one
    statement (see the module's docstring). `details`: how many updated persons' before/after texts to
    return (None: every settled person's, unchanged ones included). Returns None when Postgres refused a
    value of the chunk: the statement is rolled back to its savepoint and nothing of it remains."""
    if not diffs:
        return SetWritten()
    with conn.cursor() as cur:
        cur.execute("SAVEPOINT recon_set")
        try:
            # Index lookups per staged row: the planner knows nothing of the temporary table (as in
            # runner.stores.persons._write_set; the settings last until the transaction ends).
            cur.execute(
                f"DELETE FROM {STAGE_TABLE}; "
                "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
            )
            with cur.copy(f"COPY {STAGE_TABLE} ({_STAGE_COLUMNS}) FROM STDIN") as copy:
                for block in _stage_lines(diffs, backup):
                    copy.write(block)
            cur.execute(
                _SET_SQL,
                {
                    "job": job_id,
                    "team": team_id,
                    "backup": backup,
                    "keep": keep_messages,
                    "all_details": details is None,
                    "details": len(diffs) if details is None else details,
                },
            )
            row = cur.fetchone()
        except PERSON_ERRORS:
            cur.execute("ROLLBACK TO SAVEPOINT recon_set")
            return None
        cur.execute("RELEASE SAVEPOINT recon_set")
    assert row is not None
    (
        backups,
        _,
        batch_id,
        first_id,
        last_id,
        size,
        updated,
        unchanged,
        null_version,
        lost,
        keys,
        payloads,
        detail_ords,
        befores,
        afters,
    ) = row
    outbox = []
    if batch_id is not None:
        messages = list(zip(keys, payloads, strict=True)) if keep_messages else None
        outbox.append(
            OutboxBatch(int(batch_id), job_id, team_id, int(first_id), int(last_id), int(size), messages)
        )
    return SetWritten(
        backups=int(backups),
        updated=list(updated or ()),
        unchanged=list(unchanged or ()),
        null_version=set(null_version or ()),
        lost=list(lost or ()),
        outbox=outbox,
        details=dict(zip(detail_ords or (), zip(befores or (), afters or (), strict=True), strict=True)),
    )
