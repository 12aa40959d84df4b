-- What a build would change, per team (teams with nothing to change included): persons with a
-- diff, batches, and the entries of each kind. Counters of the events read: malformed_and_skipped.
-- dbt show --select diff_summary_by_team --vars '{...the vars of the build...}'
with entries as (
    select
        team_id,
        sum(length(set_keys)) as sets,
        sum(length(set_once_keys)) as set_onces,
        sum(length(unset_keys)) as unsets
    from {{ ref('person_property_diff') }}
    group by team_id
)

select
    summary.team_id as team_id,
    summary.persons_with_diff as persons_with_diff,
    summary.batches as batches,
    entries.sets as sets,
    entries.set_onces as set_onces,
    entries.unsets as unsets
from {{ ref('person_property_diff_summary') }} as summary
left join entries on summary.team_id = entries.team_id
order by summary.team_id
