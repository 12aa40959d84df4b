-- What the run could not use or chose not to change, per discovered team:
--   events_scanned      events since bug_window_start;
--   malformed_events    of those, events mentioning $set/$unset whose JSON is invalid (skipped);
--   persons_with_ops    persons with at least one operation since bug_window_start;
--   not_in_clickhouse   of those, absent from or deleted in ClickHouse `person` (never reconciled);
--   already_matching    selected persons whose operations already match their state (no diff).
-- dbt show --select malformed_and_skipped --vars '{...same vars as the run...}'
with window_rows as (
    select *
    from {{ ref('int_person_property_ops__by_window') }}
    where {{ recon_grid_filter() }}
        and team_id in (select team_id from {{ ref('person_property_diff_summary') }})
),

live_persons as (
    select
        team_id,
        person_id
    from {{ ref('stg_posthog__persons') }}
),

persons_with_operations as (
    select distinct
        team_id,
        person_id
    from window_rows
    where last_set is not null or first_set_once is not null or last_unset_at is not null
),

not_in_clickhouse as (
    select
        team_id,
        count() as persons_not_in_clickhouse
    from persons_with_operations
    where (team_id, person_id) not in (select * from live_persons)
    group by team_id
),

with_operations as (
    select
        team_id,
        count() as persons_with_operations
    from persons_with_operations
    group by team_id
)

select
    summary.team_id as team_id,
    summary.events_scanned as events_scanned,
    summary.malformed_events as malformed_events,
    with_operations.persons_with_operations as persons_with_ops,
    not_in_clickhouse.persons_not_in_clickhouse as not_in_clickhouse,
    summary.persons_affected - summary.persons_with_diff as already_matching
from {{ ref('person_property_diff_summary') }} as summary
left join with_operations on summary.team_id = with_operations.team_id
left join not_in_clickhouse on summary.team_id = not_in_clickhouse.team_id
order by summary.team_id
