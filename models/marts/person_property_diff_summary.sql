{{ config(materialized='table', engine='MergeTree', order_by=['team_id']) }}
{#-
  One row per team selected by discovery (R4), teams with nothing to change included. The runner takes
  its team list from this table. Like person_property_diff, a build replaces the rows of the teams
  its team vars select and keeps the others.
-#}
{%- set v = recon_vars() %}
with discovered as (
    select team_id
    from {{ ref('int_teams__discovered') }}
),

slice_counters as (
    -- one value per counter cell (team, window, hour of event time, hour of ingestion) of this grid;
    -- max collapses a cell counted again in full by a later build
    select
        team_id,
        window_start,
        slice_start,
        ingested_slice,
        max(events) as events,
        max(operations) as operations,
        max(malformed_events) as malformed_events
    from {{ ref('int_person_property_ops__by_window') }}
    where {{ recon_grid_filter() }}
        and team_id in (select team_id from discovered)
        and event_person_id = {{ recon_nil_uuid() }}
        and distinct_id = ''
        and key = ''
    group by team_id, window_start, slice_start, ingested_slice
),

counters as (
    select
        team_id,
        sum(events) as events_scanned,
        sum(operations) as operations,
        sum(malformed_events) as malformed_events
    from slice_counters
    group by team_id
),

affected as (
    select
        team_id,
        countIf(affected = 1) as persons_affected
    from {{ ref('int_person_property_diff__persons') }} {{ recon_final() }}
    where {{ recon_diff_grid_filter() }}
        and team_id in (select team_id from discovered)
    group by team_id
),

diffs as (
    select
        team_id,
        count() as persons_with_diff,
        max(batch_index) + 1 as batches
    from {{ ref('person_property_diff') }}
    where team_id in (select team_id from discovered)
    group by team_id
)

select
    discovered.team_id as team_id,
    {{ recon_literal(v['mode'], 'string') }} as mode,
    {{ recon_literal(v['semantics'], 'string') }} as semantics,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    toUInt64(counters.events_scanned) as events_scanned,
    toUInt64(counters.operations) as operations,
    toUInt64(counters.malformed_events) as malformed_events,
    toUInt64(affected.persons_affected) as persons_affected,
    toUInt64(diffs.persons_with_diff) as persons_with_diff,
    toUInt32(diffs.batches) as batches,
    {{ recon_ts('now') }} as computed_at,
    {{ recon_literal(invocation_id, 'string') }} as invocation_id
from discovered
left join counters on discovered.team_id = counters.team_id
left join affected on discovered.team_id = affected.team_id
left join diffs on discovered.team_id = diffs.team_id
{{ recon_keep_other_teams(
    'team_id, mode, semantics, bug_window_start, bug_window_end, events_scanned, operations, malformed_events, '
    ~ 'persons_affected, persons_with_diff, batches, computed_at, invocation_id',
    added={'semantics': "'original'"}) }}
