-- The keys the diff would change most often, by kind, over all teams (or one: add a team_id filter).
-- dbt show --select most_changed_keys --vars '{...the vars of the build...}' --limit 20
with entries as (
    select
        team_id,
        arrayConcat(
            arrayMap((k, t) -> tuple('set', k, t), set_keys, set_timestamps),
            arrayMap((k, t) -> tuple('set_once', k, t), set_once_keys, set_once_timestamps),
            arrayMap((k, t) -> tuple('unset', k, t), unset_keys, unset_timestamps)
        ) as person_entries
    from {{ ref('person_property_diff') }}
),

exploded as (
    select
        team_id,
        entry
    from entries
    array join person_entries as entry
)

select
    entry.1 as kind,
    entry.2 as key,
    count() as persons,
    uniqExact(team_id) as teams,
    formatDateTime(min(entry.3), '%F %T') as earliest,
    formatDateTime(max(entry.3), '%F %T') as latest
from exploded
group by kind, key
order by persons desc, kind asc, key asc
