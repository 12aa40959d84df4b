{{
    config(
        materialized='table',
        engine='MergeTree',
        order_by=['team_id', 'batch_index', 'person_id'],
    )
}}
{#-
  The diff the runner applies: one row per person with at least one entry, after the conflict filter
  of section 7. Contract with the runner: docs/contracts.md. A build replaces every row of the teams
  its team vars select and keeps the rows of all other teams (see _marts__models.yml).
-#}
{%- set v = recon_vars() %}
with affected as (
    select
        team_id,
        person_id
    from {{ ref('int_persons__affected') }}
),

-- all windows from W0 to now, merged (R5.7 / R8.3): max and min over the window values
operations as (
    select
        window_rows.team_id as team_id,
        window_rows.person_id as person_id,
        window_rows.key as key,
        max(window_rows.last_set) as last_set,
        min(window_rows.first_set_once) as first_set_once,
        max(window_rows.last_unset_at) as last_unset_at
    from {{ ref('int_person_property_ops__by_window') }} as window_rows
    where {{ recon_grid_filter() }}
        and (team_id, person_id) in (select * from affected)
        and (window_rows.last_set is not null or window_rows.first_set_once is not null or window_rows.last_unset_at is not null)
    group by window_rows.team_id, window_rows.person_id, window_rows.key
),

decided as (
    select
        operations.team_id as team_id,
        operations.person_id as person_id,
        persons.baseline_version as baseline_version,
        operations.key as key,
        {{ recon_key_decisions(
            key='operations.key', last_set='operations.last_set', first_set_once='operations.first_set_once',
            last_unset_at='operations.last_unset_at', state_keys='persons.state_keys',
            state_values='persons.state_values') }}
    from operations
    inner join {{ ref('stg_posthog__persons') }} as persons
        on operations.team_id = persons.team_id
            and operations.person_id = persons.person_id
),

per_person as (
    select
        team_id,
        person_id,
        any(baseline_version) as baseline_version,
        arraySort(groupArrayIf(tuple(key, set_value, set_at), keep_set)) as set_entries,
        arraySort(groupArrayIf(tuple(key, set_once_value, set_once_at), keep_set_once)) as set_once_entries,
        arraySort(groupArrayIf(tuple(key, unset_at), keep_unset)) as unset_entries
    from decided
    -- only kept entries: a person without any has no row (and most persons compared have none)
    where keep_set or keep_set_once or keep_unset
    group by team_id, person_id
)

select
    team_id,
    toUInt32(intDiv(
        row_number() over (partition by team_id order by person_id) - 1,
        {{ recon_literal(v['person_batch_size'], 'integer', bare=true) }}
    )) as batch_index,
    person_id,
    toUInt64(baseline_version) as baseline_version,
    arrayMap(entry -> entry.1, set_entries) as set_keys,
    arrayMap(entry -> entry.2, set_entries) as set_values,
    arrayMap(entry -> entry.3, set_entries) as set_timestamps,
    arrayMap(entry -> entry.1, set_once_entries) as set_once_keys,
    arrayMap(entry -> entry.2, set_once_entries) as set_once_values,
    arrayMap(entry -> entry.3, set_once_entries) as set_once_timestamps,
    arrayMap(entry -> entry.1, unset_entries) as unset_keys,
    arrayMap(entry -> entry.2, unset_entries) as unset_timestamps,
    {{ recon_literal(v['mode'], 'string') }} as mode,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    {{ recon_ts('now') }} as computed_at,
    {{ recon_literal(invocation_id, 'string') }} as invocation_id
from per_person
{{ recon_keep_other_teams(
    'team_id, batch_index, person_id, baseline_version, set_keys, set_values, set_timestamps, '
    ~ 'set_once_keys, set_once_values, set_once_timestamps, unset_keys, unset_timestamps, '
    ~ 'mode, bug_window_start, bug_window_end, computed_at, invocation_id') }}
