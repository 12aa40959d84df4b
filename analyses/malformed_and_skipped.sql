-- What the run could not use or chose not to change, per discovered team:
--   events_scanned      events since bug_window_start;
--   malformed_events    of those, events mentioning $set/$unset whose JSON is invalid (skipped);
--   persons_with_ops    persons with at least one operation since bug_window_start;
--   not_in_clickhouse   of those, absent from or deleted in ClickHouse `person` (never reconciled);
--   already_matching    selected persons whose operations already match their state (no diff).
-- dbt show --select malformed_and_skipped --vars '{...same vars as the run...}'
with persons as (
    select
        team_id,
        countIf(has_operations = 1) as persons_with_ops,
        countIf(has_operations = 1 and is_live = 0) as persons_not_in_clickhouse
    from {{ ref('int_person_property_diff__persons') }} {{ recon_final() }}
    where {{ recon_diff_grid_filter() }}
        and person_id != toUUID('00000000-0000-0000-0000-000000000000')
        and team_id in (select team_id from {{ ref('person_property_diff_summary') }})
    group by team_id
)

select
    summary.team_id as team_id,
    summary.events_scanned as events_scanned,
    summary.malformed_events as malformed_events,
    persons.persons_with_ops as persons_with_ops,
    persons.persons_not_in_clickhouse as not_in_clickhouse,
    summary.persons_affected - summary.persons_with_diff as already_matching
from {{ ref('person_property_diff_summary') }} as summary
left join persons on summary.team_id = persons.team_id
order by summary.team_id
