{#-
  Property operations carried by events (spec R5), with the event's distinct_id and own person_id:
  the person is resolved through the overrides (R5.3) only when the diff is built
  (int_person_property_diff__persons), so that a merge after an aggregation lands on the right
  person. Grain: one row per operation (kind set, set_once, unset), plus exactly one row of kind
  `event` per event read, which carries the event's counters (so that operation keys (R4.1),
  malformed JSON and operations are counted in the same single scan of `events` that extracts them).

  Scope: events with W0 <= timestamp < now of the teams selected by the team vars (R5.1, R4.2) whose
  properties mention `$set` or `$unset` at all (R5.2: a cheap substring test; the others cannot
  carry an operation and are not read further - stg_posthog__events counts them).
  Extraction (R5.2-R5.6):
    * cheap substring tests decide whether the JSON is parsed at all; PostHog writes the keys
      `$set`, `$set_once`, `$unset` literally (a key spelled with JSON escapes would be missed);
    * `$set` / `$set_once` produce one operation per top-level member when they are objects, with the
      member's raw JSON text as value as ClickHouse re-serialises it (strings keep their quotes, objects
      and arrays stay whole, `1.0` becomes `1`), except that integers beyond 64 bits, which ClickHouse
      quotes, are given back as numbers (macros/recon_numbers.sql); members whose value is JSON null
      are dropped;
    * `$unset` produces one UNSET per element when it is an array; the key is the element's scalar
      text: a string gives its decoded content, a number or boolean its text, null/object/array the
      empty string; `$unset` as an object produces nothing;
    * blocklisted keys (R5.6) are dropped for all three kinds;
    * malformed `properties` JSON produces no operation and never fails the query; it is counted on
      the event row (`event_is_malformed`, for events that mention `$set`/`$unset`).
  `position` (1-based order of the member inside its object or array) and `event_uuid` make the
  tie-break of R5.9 deterministic downstream.
-#}
with events_in_scope as (
    select
        team_id,
        uuid as event_uuid,
        timestamp,
        {{ recon_event_ingested_at() }} as ingested_at,
        distinct_id,
        person_id as event_person_id,
        properties,
        if(position(properties, '"$set"') > 0, JSONExtractRaw(properties, '$set'), '') as set_json,
        if(position(properties, '"$set_once"') > 0, JSONExtractRaw(properties, '$set_once'), '') as set_once_json,
        if(position(properties, '"$unset"') > 0, JSONExtractRaw(properties, '$unset'), '') as unset_json,
        -- R4.1: a top-level $set / $set_once / $unset key, whatever its value (null included)
        set_json != '' or set_once_json != '' or unset_json != '' as has_operation_keys,
        not has_operation_keys and not isValidJSON(properties) as is_malformed
    from {{ source('posthog', 'events') }}
    where timestamp >= {{ recon_ts('bug_window_start') }}
        and timestamp < {{ recon_ts('now') }}
        and {{ recon_team_filter('team_id') }}
        and (position(properties, '$set') > 0 or position(properties, '$unset') > 0)
),

extracted as (
    select
        events_in_scope.*,
        {{ recon_has_long_digits('set_json') }} or {{ recon_has_long_digits('set_once_json') }} as has_long_digits,
        {{ recon_members('set_json', 'properties', 'has_long_digits') }} as set_members,
        {{ recon_members('set_once_json', 'properties', 'has_long_digits') }} as set_once_members,
        JSONExtractArrayRaw(unset_json) as unset_elements,
        arrayFilter(
            operation -> operation.3 != 'null' and not has({{ recon_blocklist_sql() }}, operation.2),  -- noqa: ST10
            arrayConcat(
                arrayMap(
                    (member, i) -> tuple('set', member.1, member.2, toUInt32(i)),
                    set_members, arrayEnumerate(set_members)
                ),
                arrayMap(
                    (member, i) -> tuple('set_once', member.1, member.2, toUInt32(i)),
                    set_once_members, arrayEnumerate(set_once_members)
                ),
                arrayMap(
                    (element, i) -> tuple(
                        'unset',
                        multiIf(
                            startsWith(element, '"'), JSONExtractString(element),
                            startsWith(element, '{') or startsWith(element, '[') or element = 'null', '',
                            element
                        ),
                        '',
                        toUInt32(i)
                    ),
                    unset_elements, arrayEnumerate(unset_elements)
                )
            )
        ) as operations
    from events_in_scope
)

select
    team_id,
    event_uuid,
    timestamp,
    ingested_at,
    distinct_id,
    event_person_id,
    operation.1 as kind,
    operation.2 as key,
    operation.3 as value,
    operation.4 as position,
    toBool(has_operation_keys) as event_has_operation_keys,
    toBool(is_malformed) as event_is_malformed,
    toUInt32(length(operations)) as event_operations
from extracted
array join arrayPushFront(operations, tuple('event', '', '', toUInt32(0))) as operation
