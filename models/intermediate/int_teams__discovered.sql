{{ config(materialized='table', engine='MergeTree', order_by=['team_id']) }}
{#-
  Team discovery (spec R4.1-R4.6): the teams selected by the team vars that have at least one event in
  [W0, W1) carrying a top-level `$set`, `$set_once` or `$unset` key (presence only: a null, empty or
  non-object value counts). Read from the event counters of the per-window aggregation, whose windows
  are split at W1, so no second scan of `events` is needed.
-#}
with slice_counters as (
    -- one value per counter cell (team, window, hour of event time, hour of ingestion); max collapses
    -- a cell counted again by a later build
    select
        team_id,
        window_start,
        slice_start,
        ingested_slice,
        max(events_with_operation_keys) as events_with_operation_keys
    from {{ ref('int_person_property_ops__by_window') }}
    where {{ recon_grid_filter() }}
        and {{ recon_team_filter('team_id') }}
        and window_start < {{ recon_ts('bug_window_end') }}
        and event_person_id = {{ recon_nil_uuid() }}
        and distinct_id = ''
        and key = ''
    group by team_id, window_start, slice_start, ingested_slice
)

select
    team_id,
    sum(events_with_operation_keys) as bug_window_events_with_operation_keys
from slice_counters
group by team_id
having bug_window_events_with_operation_keys > 0
