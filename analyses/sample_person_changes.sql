-- A reproducible sample of persons with their current ClickHouse value and the proposed change, one
-- row per key. `current_value` is NULL when the key is absent; `proposed_value` is NULL for an unset.
-- Values are raw JSON text. Add `--output json` to see uuids and long values untruncated.
-- dbt show --select sample_person_changes --vars '{...}' --limit 30
{%- set sample_persons = 10 %}
with sampled as (
    select *
    from {{ ref('person_property_diff') }}
    order by cityHash64(team_id, person_id)
    limit {{ sample_persons }}
),

entries as (
    select
        team_id,
        person_id,
        baseline_version,
        entry.1 as kind,
        entry.2 as key,
        entry.3 as proposed_value,
        entry.4 as operation_at
    from sampled
    array join arrayConcat(
        arrayMap((k, v, t) -> tuple('set', k, toNullable(v), t), set_keys, set_values, set_timestamps),
        arrayMap((k, v, t) -> tuple('set_once', k, toNullable(v), t), set_once_keys, set_once_values, set_once_timestamps),
        arrayMap((k, t) -> tuple('unset', k, cast(null as Nullable(String)), t), unset_keys, unset_timestamps)
    ) as entry
)

select
    entries.team_id as team_id,
    entries.person_id as person_id,
    entries.key as key,
    entries.kind as kind,
    if(
        indexOf(persons.state_keys, entries.key) > 0,
        toNullable(arrayElement(persons.state_values, indexOf(persons.state_keys, entries.key))),
        null
    ) as current_value,
    entries.proposed_value as proposed_value
from entries
left join {{ ref('stg_posthog__persons') }} as persons
    on entries.team_id = persons.team_id
        and entries.person_id = persons.person_id
order by cityHash64(entries.team_id, entries.person_id), entries.key
