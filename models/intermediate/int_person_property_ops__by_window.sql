{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        engine='AggregatingMergeTree',
        order_by=['team_id', 'bug_window_start', 'bug_window_end', 'window_seconds',
                  'window_start', 'slice_start', 'person_id', 'key'],
        on_schema_change='fail',
        query_settings={'optimize_on_insert': 0},
        post_hook=["{{ recon_record_built_until() }}"],
    )
}}
{#-
  optimize_on_insert = 0: each INSERT already has one row per key, so collapsing rows on insert
  would only cost time (about 40% of this model's insert, measured).

  Per team, window and person: the aggregated property operations of R5.7 as mergeable values, plus
  per (team, window, slice) event counters and per team the ledger of what has been built.
  See _intermediate__models.yml for the row kinds and the reasons for this materialisation.
-#}
{%- set v = recon_vars() -%}
{%- if is_incremental() %}{{ recon_check_now_not_behind_ledger() }}{% endif %}

with built as (
    -- where each team's previous builds of this grid stopped (the ledger rows of the post-hook)
    {%- if is_incremental() %}
    select
        ledger.team_id as team_id,
        max(ledger.built_until) as built_until
    from {{ this }} as ledger
    where {{ recon_grid_filter('ledger') }}
        and ledger.built_until is not null
        and {{ recon_team_filter('ledger.team_id') }}
    group by ledger.team_id
    {%- else %}
    select
        toInt64(0) as team_id,
        {{ recon_ts('bug_window_start') }} as built_until
    where false
    {%- endif %}
),

operations as (
    select
        team_id as op_team_id,
        event_uuid,
        timestamp,
        person_id as op_person_id,
        kind,
        key as op_key,
        value,
        position,
        event_has_operation_keys,
        event_is_malformed,
        event_operations,
        transform(
            team_id,
            (select groupArray(team_id) as teams from built),
            (select groupArray(built_until) as ends from built),
            {{ recon_ts('bug_window_start') }}
        ) as build_from
    from {{ ref('stg_posthog__property_operations') }}
    where timestamp >= build_from
),

-- all events, for the `events` counter (no properties read)
events as (
    select
        team_id as event_team_id,
        timestamp,
        transform(
            team_id,
            (select groupArray(team_id) as teams from built),
            (select groupArray(built_until) as ends from built),
            {{ recon_ts('bug_window_start') }}
        ) as build_from
    from {{ ref('stg_posthog__events') }}
    where timestamp >= build_from
)

select
    op_team_id as team_id,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}) as window_seconds,
    {{ recon_window_start('timestamp') }} as window_start,
    greatest(window_start, build_from) as slice_start,
    if(kind = 'event', {{ recon_nil_uuid() }}, op_person_id) as person_id,
    if(kind = 'event', '', op_key) as key,
    -- R5.7 with the deterministic tie-break of R5.9: the greatest / least (timestamp, event uuid,
    -- position, value); max and min are idempotent, so re-inserting a window changes nothing.
    cast(
        maxOrNullIf(tuple(timestamp, event_uuid, position, value), kind = 'set')
        as SimpleAggregateFunction(max, Nullable({{ recon_operation_type() }}))
    ) as last_set,
    cast(
        minOrNullIf(tuple(timestamp, event_uuid, position, value), kind = 'set_once')
        as SimpleAggregateFunction(min, Nullable({{ recon_operation_type() }}))
    ) as first_set_once,
    cast(
        maxOrNullIf(timestamp, kind = 'unset')
        as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))
    ) as last_unset_at,
    -- counters of the slice (event rows only); max keeps them exact when a slice is inserted twice,
    -- and merges them with the `events` counter of the second branch (same key, other column)
    cast(0 as SimpleAggregateFunction(max, UInt64)) as events,
    cast(countIf(kind = 'event' and event_has_operation_keys) as SimpleAggregateFunction(max, UInt64))
        as events_with_operation_keys,
    cast(countIf(kind = 'event' and event_is_malformed) as SimpleAggregateFunction(max, UInt64)) as malformed_events,
    cast(sumIf(toUInt64(event_operations), kind = 'event') as SimpleAggregateFunction(max, UInt64)) as operations,
    cast(null as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as built_until
from operations
group by team_id, window_start, slice_start, person_id, key

union all

select
    event_team_id as team_id,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}) as window_seconds,
    {{ recon_window_start('timestamp') }} as window_start,
    greatest(window_start, build_from) as slice_start,
    {{ recon_nil_uuid() }} as person_id,
    '' as key,
    cast(null as SimpleAggregateFunction(max, Nullable({{ recon_operation_type() }}))) as last_set,
    cast(null as SimpleAggregateFunction(min, Nullable({{ recon_operation_type() }}))) as first_set_once,
    cast(null as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as last_unset_at,
    cast(count() as SimpleAggregateFunction(max, UInt64)) as events,
    cast(0 as SimpleAggregateFunction(max, UInt64)) as events_with_operation_keys,
    cast(0 as SimpleAggregateFunction(max, UInt64)) as malformed_events,
    cast(0 as SimpleAggregateFunction(max, UInt64)) as operations,
    cast(null as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as built_until
from events
group by team_id, window_start, slice_start
