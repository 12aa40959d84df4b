{{ config(materialized='table', engine='MergeTree', order_by=['team_id', 'person_id']) }}
{#-
  The persons whose diff is computed, per discovered team.
    windowed mode (R8.8, step 1): persons with at least one difference under the rules of R6.4
      between the operations of [W0, W1) alone and their current ClickHouse state. W1 is exclusive,
      like discovery; the conflict filter of section 7 is not needed here because it never removes a
      person (R7.3).
    single pass (R6.1-R6.2): every person with at least one operation since W0 that is live in
      ClickHouse `person`.
  Persons absent from `person` or deleted there are never selected (gotcha 11).
-#}
{%- set v = recon_vars() %}
{%- if v['mode'] == 'windowed' %}
-- R8.8 step 1: the operations of the bug window alone, compared with the current state
with operations as (
    select
        window_rows.team_id as team_id,
        window_rows.person_id as person_id,
        window_rows.key as key,
        max(window_rows.last_set) as last_set,
        min(window_rows.first_set_once) as first_set_once,
        max(window_rows.last_unset_at) as last_unset_at
    from {{ ref('int_person_property_ops__by_window') }} as window_rows
    where {{ recon_grid_filter() }}
        and window_rows.window_start < {{ recon_ts('bug_window_end') }}
        and window_rows.team_id in (select team_id from {{ ref('int_teams__discovered') }})
        and (window_rows.last_set is not null or window_rows.first_set_once is not null or window_rows.last_unset_at is not null)
    group by window_rows.team_id, window_rows.person_id, window_rows.key
),

decided as (
    select
        operations.team_id as team_id,
        operations.person_id as person_id,
        {{ recon_key_decisions(
            key='operations.key', last_set='operations.last_set', first_set_once='operations.first_set_once',
            last_unset_at='operations.last_unset_at', state_keys='persons.state_keys',
            state_values='persons.state_values') }}
    from operations
    inner join {{ ref('stg_posthog__persons') }} as persons
        on operations.team_id = persons.team_id
            and operations.person_id = persons.person_id
)

select
    team_id,
    person_id
from decided
group by team_id, person_id
having max(in_set or in_set_once or in_unset)
{%- else %}
-- R6.1-R6.2: every person with an operation since W0, if live in ClickHouse
with live_persons as (
    select
        team_id,
        person_id
    from {{ ref('stg_posthog__persons') }}
)

select distinct
    window_rows.team_id as team_id,
    window_rows.person_id as person_id
from {{ ref('int_person_property_ops__by_window') }} as window_rows
where {{ recon_grid_filter() }}
    and window_rows.team_id in (select team_id from {{ ref('int_teams__discovered') }})
    and (window_rows.last_set is not null or window_rows.first_set_once is not null or window_rows.last_unset_at is not null)
    and (window_rows.team_id, window_rows.person_id) in (select * from live_persons)
{%- endif %}
