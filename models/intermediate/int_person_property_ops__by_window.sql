{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        engine='AggregatingMergeTree',
        order_by=['team_id', 'event_person_id', 'distinct_id', 'key',
                  'bug_window_start', 'bug_window_end', 'window_seconds', 'window_start', 'slice_start', 'ingested_slice'],
        on_schema_change='fail',
        query_settings={'optimize_on_insert': 0},
        pre_hook=["{{ recon_drop_built() }}", "{{ recon_build_ops_ledger() }}"],
        post_hook=["{{ recon_record_built_until() }}"],
    )
}}
{#-
  optimize_on_insert = 0: each INSERT already has one row per key, so collapsing rows on insert
  would only cost time.

  Per team, window, distinct_id, event person and key: the aggregated property operations of R5.7 as
  mergeable states (macros/recon_op_states.sql); per (team, window, hour of event time, hour of
  ingestion) the event counters; per team the ledger of what has been built. Persons are NOT resolved
  here: the overrides are applied when the diff is built, so a merge after this build is honoured.
  See _intermediate__models.yml for the row kinds, the watermark and the reasons.
-#}
{%- set v = recon_vars() -%}
{%- if is_incremental() %}{{ recon_check_now_not_behind_ledger() }}{% endif %}
{#- the events read: all (a full build), or the new ones as three disjoint branches (recon_new_rows_filter) -#}
{%- set branches = ['new_teams', 'event_time', 'ingestion_time'] if is_incremental() else ['all'] %}
{%- set index_settings = recon_ingestion_index_settings() if is_incremental() else '' %}

with built as (
    -- per team, where the previous builds of this grid stopped (a small table the pre-hook wrote:
    -- macros/recon_ledger.sql recon_build_ops_ledger)
    {%- if is_incremental() %}
    select
        team_id,
        read_from,
        ingested_from
    from {{ recon_built_relation() }}
    {%- else %}
    select
        toInt64(0) as team_id,
        {{ recon_ts('bug_window_start') }} as read_from,
        {{ recon_ts('bug_window_start') }} as ingested_from
    where false
    {%- endif %}
),

operations as (
    {%- for branch in branches %}
    select
        team_id as op_team_id,
        event_uuid,
        timestamp,
        ingested_at,
        distinct_id as op_distinct_id,
        event_person_id as op_event_person_id,
        kind,
        key as op_key,
        value,
        position,
        event_has_operation_keys,
        event_is_malformed,
        event_operations
    from {{ ref('stg_posthog__property_operations') }}
    {{ recon_new_rows_filter(branch, index_settings=index_settings) }}
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
),

-- all events, for the `events` counter and the ingestion watermark (no properties read)
events as (
    {%- for branch in branches %}
    select
        team_id as event_team_id,
        timestamp,
        ingested_at
    from {{ ref('stg_posthog__events') }}
    {{ recon_new_rows_filter(branch, index_settings=index_settings) }}
    {%- if not loop.last %}
    union all
    {%- endif %}
    {%- endfor %}
)

select
    op_team_id as team_id,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}) as window_seconds,
    if(kind = 'event', {{ recon_nil_uuid() }}, op_event_person_id) as event_person_id,
    if(kind = 'event', '', op_distinct_id) as distinct_id,
    if(kind = 'event', '', op_key) as key,
    {{ recon_window_start('timestamp') }} as window_start,
    if(kind = 'event', toDateTime64(toStartOfHour(timestamp), 6, 'UTC'), window_start) as slice_start,
    if(kind = 'event', toDateTime64(toStartOfHour(ingested_at), 6, 'UTC'), window_start) as ingested_slice,
    -- R5.7 with the deterministic tie-break of R5.9 (macros/recon_op_states.sql)
    {{ recon_op_states_select(real=true) }},
    -- counters of the cell (event rows only); max keeps them exact when a cell is counted again in
    -- full, and merges them with the `events` counter of the second branch (same key, other column)
    cast(0 as SimpleAggregateFunction(max, UInt64)) as events,
    cast(countIf(kind = 'event' and event_has_operation_keys) as SimpleAggregateFunction(max, UInt64))
        as events_with_operation_keys,
    cast(countIf(kind = 'event' and event_is_malformed) as SimpleAggregateFunction(max, UInt64)) as malformed_events,
    cast(sumIf(toUInt64(event_operations), kind = 'event') as SimpleAggregateFunction(max, UInt64)) as operations,
    -- operation rows: the newest ingestion time of their operations (the dirty set of the diff finds
    -- the groups with new operations by it, macros/recon_dirty_persons.sql); NULL on counter rows here
    cast(maxOrNullIf(ingested_at, kind != 'event') as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC'))))
        as ingested_max,
    cast(null as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as built_until,
    cast(null as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as ingested_until
from operations
group by team_id, event_person_id, distinct_id, key, window_start, slice_start, ingested_slice

union all

select
    event_team_id as team_id,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}) as window_seconds,
    {{ recon_nil_uuid() }} as event_person_id,
    '' as distinct_id,
    '' as key,
    {{ recon_window_start('timestamp') }} as window_start,
    toDateTime64(toStartOfHour(timestamp), 6, 'UTC') as slice_start,
    toDateTime64(toStartOfHour(ingested_at), 6, 'UTC') as ingested_slice,
    {{ recon_op_states_select(real=false) }},
    cast(count() as SimpleAggregateFunction(max, UInt64)) as events,
    cast(0 as SimpleAggregateFunction(max, UInt64)) as events_with_operation_keys,
    cast(0 as SimpleAggregateFunction(max, UInt64)) as malformed_events,
    cast(0 as SimpleAggregateFunction(max, UInt64)) as operations,
    cast(max(ingested_at) as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as ingested_max,
    cast(null as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as built_until,
    cast(null as SimpleAggregateFunction(max, Nullable(DateTime64(6, 'UTC')))) as ingested_until
from events
group by team_id, window_start, slice_start, ingested_slice
