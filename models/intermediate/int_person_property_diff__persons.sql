-- depends_on: {{ ref('stg_posthog__events') }}
-- depends_on: {{ ref('stg_posthog__property_operations') }}
{{
    config(
        materialized='incremental',
        incremental_strategy='append',
        engine='ReplacingMergeTree(computed_version)',
        order_by=['team_id', 'bug_window_start', 'bug_window_end', 'window_seconds', 'semantics', 'person_id'],
        on_schema_change='fail',
        pre_hook=["{{ recon_drop_dirty_persons() }}", "{{ recon_drop_diff_ledger() }}",
                  "{{ recon_build_diff_ledger() }}", "{{ recon_build_dirty_persons() }}"],
        post_hook=["{{ recon_record_diffed_until() }}"],
    )
}}
{#-
  Per resolved person: whether it is affected (R6.1-R6.2 single pass, R8.8 windowed) and its diff
  entries after section 7. Incremental: a build recomputes only the persons whose inputs changed since
  the previous build of this grid (the "dirty" persons) and appends their new rows; ReplacingMergeTree
  keeps the newest row per person (readers use FINAL). A team without a previous build is computed in
  full. See _intermediate__models.yml for the dirty set and the reasons.
-#}
{%- set v = recon_vars() -%}
{%- set incremental = is_incremental() -%}
{%- set windowed = v['mode'] == 'windowed' -%}
{%- set replay = v['semantics'] == 'replay' -%}
{%- set decide_from = 'with_replay' if replay else 'with_state' -%}
{%- set nil = recon_nil_uuid() -%}
{%- set version = recon_build_version() -%}
{%- set empty_ts = "cast([] as Array(DateTime64(6, 'UTC')))" -%}
{%- set null_ts = "cast(null as Nullable(DateTime64(6, 'UTC')))" -%}


-- the incremental blocks are not rendered by the linter, which then misjudges their indentation
-- noqa: disable=LT02
with
{%- if incremental %}
ledger as (
    {{ recon_diff_ledger() }}
),

-- the persons this build recomputes, written by the pre-hook (macros/recon_dirty_persons.sql)
dirty as (
    select
        team_id,
        person_id
    from {{ recon_dirty_relation() }}
),
{%- endif %}
-- noqa: enable=LT02

-- distinct_ids whose live override points to a person computed here
attached as (
    select
        team_id,
        distinct_id
    from {{ ref('base_posthog__live_distinct_id_overrides') }}
    where {{ recon_team_filter('team_id') }}
        and {{ recon_in_scope('team_id', 'person_id') }}
),

-- every group that may resolve to a person computed here, resolved through the live overrides (R5.3)
resolved as (
    select
        group_rows.team_id as team_id,
        -- an unmatched left-join row has an empty distinct_id
        if(overrides.distinct_id != '', overrides.person_id, group_rows.event_person_id) as person_id,
        group_rows.key as key,
        group_rows.window_start as window_start,
        {{ recon_op_states_columns('group_rows') }}
    from {{ ref('int_person_property_ops__by_window') }} as group_rows
    left join {{ ref('base_posthog__live_distinct_id_overrides') }} as overrides
        on group_rows.team_id = overrides.team_id
            and group_rows.distinct_id = overrides.distinct_id
    where {{ recon_grid_filter('group_rows') }}
        and {{ recon_team_filter('group_rows.team_id') }}
        and {{ recon_op_states_present('group_rows') }}
        -- noqa: disable=LT02
        {%- if incremental %}
        and (
            group_rows.team_id not in (select team_id from ledger)
            or (group_rows.team_id, group_rows.event_person_id) in (
                select
                    team_id,
                    person_id
                from dirty
            )
            or (group_rows.team_id, group_rows.distinct_id) in (
                select
                    team_id,
                    distinct_id
                from attached
            )
        )
        {%- endif %}
-- noqa: enable=LT02
),

-- all windows from W0 to now merged per person and key (R5.7 / R8.3), and, windowed, those before W1
operations as (
    select
        resolved.team_id as team_id,
        resolved.person_id as person_id,
        resolved.key as key,
        {{ recon_op_states_merge('resolved', more=windowed) }}
        {{ recon_op_states_merge('resolved', prefix='window_', condition='resolved.window_start < ' ~ recon_ts('bug_window_end'))
            if windowed }}
    from resolved
    where {{ recon_in_scope('resolved.team_id', 'resolved.person_id') }}
    group by resolved.team_id, resolved.person_id, resolved.key
),

persons as (
    select
        team_id,
        person_id,
        baseline_version,
        toUInt8(1) as is_live
    from {{ ref('stg_posthog__persons') }}
    where {{ recon_in_scope('team_id', 'person_id') }}
),

-- the current state one row per (person, key) (R6.3: with duplicate keys the first one counts, like
-- indexOf), joined to the operations by key: each operation row gets its own key's value only,
-- instead of a copy of the person's whole state to search
person_state as (
    select
        team_id as state_team_id,
        person_id as state_person_id,
        tupleElement(member, 1) as state_key,
        tupleElement(member, 2) as state_raw_value,
        toUInt8(1) as state_found
    from (
        select
            team_id,
            person_id,
            arrayJoin(arrayFilter(
                (member, position) -> indexOf(state_keys, tupleElement(member, 1)) = position,
                arrayZip(state_keys, state_values),
                arrayEnumerate(state_keys)
            )) as member
        from {{ ref('stg_posthog__persons') }}
        where {{ recon_in_scope('team_id', 'person_id') }}
    )
),

with_state as (
    select
        operations.team_id as team_id,
        operations.person_id as person_id,
        operations.key as key,
        {%- for s in recon_op_states() %}
        operations.{{ s.name }} as {{ s.name }},
        {%- endfor %}
        {%- if windowed %}
        {%- for s in recon_op_states() %}
        operations.window_{{ s.name }} as window_{{ s.name }},
        {%- endfor %}
        {%- endif %}
        persons.baseline_version as baseline_version,
        persons.is_live as is_live,
        -- R6.4: presence counts a JSON null value as present
        person_state.state_found = 1 as in_state,
        person_state.state_raw_value as state_value
    from operations
    -- persons absent from ClickHouse or deleted there get the defaults: is_live = 0 (gotcha 11)
    left join persons
        on operations.team_id = persons.team_id
            and operations.person_id = persons.person_id
    -- keys absent from the state get the defaults: in_state = false, state_value = ''
    left join person_state
        on operations.team_id = person_state.state_team_id
            and operations.person_id = person_state.state_person_id
            and operations.key = person_state.state_key
),
{% if replay %}
-- semantics replay (macros/recon_replay.sql): the keys whose replay ends with an UNSET followed by a
-- SET_ONCE (windowed: also among the operations before W1), and that first SET_ONCE, read from the
-- operations of those keys alone
replay_pending as (
    select
        team_id,
        person_id,
        key,
        assumeNotNull(last_unset_at) as unset_at,
        {{ recon_ts('now') }} as upto
    from with_state
    where {{ recon_replay_needs_first_after() }}
    {%- if windowed %}
    union all
    select
        team_id,
        person_id,
        key,
        assumeNotNull(window_last_unset_at) as unset_at,
        {{ recon_ts('bug_window_end') }} as upto
    from with_state
    where {{ recon_replay_needs_first_after('window_last_set', 'window_last_unset_at', 'window_last_set_once_at') }}
    {%- endif %}
),

replay_set_onces as (
    select
        ops.team_id as team_id,
        -- resolved like the windows' rows (R5.3)
        if(overrides.distinct_id != '', overrides.person_id, ops.event_person_id) as person_id,
        ops.key as key,
        cast(tuple(ops.timestamp, ops.event_uuid, ops.position, ops.value) as {{ recon_operation_type() }}) as operation
    from {{ ref('stg_posthog__property_operations') }} as ops
    left join {{ ref('base_posthog__live_distinct_id_overrides') }} as overrides
        on ops.team_id = overrides.team_id
            and ops.distinct_id = overrides.distinct_id
    where ops.kind = 'set_once'
        and ops.team_id in (select team_id from replay_pending)
        and ops.key in (select key from replay_pending)
        and ops.timestamp > (select min(unset_at) as earliest from replay_pending)
),

replay_first_after as (
    select
        pending.team_id as team_id,
        pending.person_id as person_id,
        pending.key as key,
        pending.upto as upto,
        minOrNull(set_onces.operation) as first_set_once_after_unset
    from replay_pending as pending
    inner join replay_set_onces as set_onces
        on pending.team_id = set_onces.team_id
            and pending.person_id = set_onces.person_id
            and pending.key = set_onces.key
    where tupleElement(set_onces.operation, 1) > pending.unset_at
        and tupleElement(set_onces.operation, 1) < pending.upto
    group by pending.team_id, pending.person_id, pending.key, pending.upto
),

-- the first SET_ONCEs found up to now, and (windowed) before W1, keyed apart for the joins below
full_replay as (
    select
        team_id as found_team_id,
        person_id as found_person_id,
        key as found_key,
        first_set_once_after_unset
    from replay_first_after
    where upto = {{ recon_ts('now') }}
),
{%- if windowed %}

window_replay as (
    select
        team_id as found_team_id,
        person_id as found_person_id,
        key as found_key,
        first_set_once_after_unset
    from replay_first_after
    where upto = {{ recon_ts('bug_window_end') }}
),
{%- endif %}

with_replay as (
    select
        with_state.*,
        {%- if windowed %}
        window_replay.first_set_once_after_unset as window_first_set_once_after_unset,
        {%- endif %}
        full_replay.first_set_once_after_unset as first_set_once_after_unset
    from with_state
    left join full_replay
        on with_state.team_id = full_replay.found_team_id
            and with_state.person_id = full_replay.found_person_id
            and with_state.key = full_replay.found_key
    {%- if windowed %}
    left join window_replay
        on with_state.team_id = window_replay.found_team_id
            and with_state.person_id = window_replay.found_person_id
            and with_state.key = window_replay.found_key
    {%- endif %}
),
{%- endif %}

{%- if windowed %}
-- R8.8 step 1: a difference under R6.4 between the operations of [W0, W1) alone and the current
-- state (the conflict filter never removes a person, R7.3)
window_checked as (
    select
        team_id,
        person_id,
        key,
        baseline_version,
        in_state,
        state_value,
        is_live,
        window_diff,
        {{- ' first_set_once_after_unset,' if replay }}
        {{ recon_op_states_names() }}
    from (
        select
            {{ decide_from }}.*,
            {{ recon_decisions(v['semantics'], prefix='window_', first_after='window_first_set_once_after_unset') }},
            in_set or in_set_once or in_unset as window_diff
        from {{ decide_from }}
    )
),
{%- endif %}

decided as (
    select
        team_id,
        person_id,
        key,
        baseline_version,
        is_live,
        {{ 'window_diff' if windowed else 'toUInt8(1) as window_diff' }},
        {{ recon_decisions(v['semantics']) }}
    from {{ 'window_checked' if windowed else decide_from }}
),

per_person as (
    select
        team_id,
        person_id,
        max(is_live) as live,
        toUInt8(live and max(window_diff)) as is_affected,
        any(baseline_version) as baseline,
        arraySort(groupArrayIf(tuple(key, set_value, set_at), keep_set)) as set_entries,
        arraySort(groupArrayIf(tuple(key, set_once_value, set_once_at), keep_set_once)) as set_once_entries,
        arraySort(groupArrayIf(tuple(key, unset_at), keep_unset)) as unset_entries
    from decided
    group by team_id, person_id
)

select
    team_id,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}) as window_seconds,
    {{ recon_literal(v['semantics'], 'string') }} as semantics,
    person_id,
    toUInt8(1) as has_operations,
    toUInt8(live) as is_live,
    is_affected as affected,
    toUInt8(is_affected and length(set_entries) + length(set_once_entries) + length(unset_entries) > 0) as has_diff,
    toUInt64(if(live, baseline, 0)) as baseline_version,
    arrayMap(entry -> entry.1, if(is_affected, set_entries, [])) as set_keys,
    arrayMap(entry -> entry.2, if(is_affected, set_entries, [])) as set_values,
    arrayMap(entry -> entry.3, if(is_affected, set_entries, [])) as set_timestamps,
    arrayMap(entry -> entry.1, if(is_affected, set_once_entries, [])) as set_once_keys,
    arrayMap(entry -> entry.2, if(is_affected, set_once_entries, [])) as set_once_values,
    arrayMap(entry -> entry.3, if(is_affected, set_once_entries, [])) as set_once_timestamps,
    arrayMap(entry -> entry.1, if(is_affected, unset_entries, [])) as unset_keys,
    arrayMap(entry -> entry.2, if(is_affected, unset_entries, [])) as unset_timestamps,
    toUInt64({{ version }} + 1) as computed_version,
    {{ recon_literal(invocation_id, 'string') }} as invocation_id,
    {{ null_ts }} as built_until,
    {{ null_ts }} as events_ingested_until,
    {{ null_ts }} as persons_ingested_until,
    {{ null_ts }} as overrides_ingested_until
from per_person
{%- if incremental %}

union all

-- an empty row (older version than the rows above) for every person recomputed here, so that a
-- person left without operations, or no longer live, loses its previous row
select
    team_id,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}) as window_seconds,
    {{ recon_literal(v['semantics'], 'string') }} as semantics,
    person_id,
    toUInt8(0) as has_operations,
    toUInt8(0) as is_live,
    toUInt8(0) as affected,
    toUInt8(0) as has_diff,
    toUInt64(0) as baseline_version,
    cast([] as Array(String)) as set_keys,
    cast([] as Array(String)) as set_values,
    {{ empty_ts }} as set_timestamps,
    cast([] as Array(String)) as set_once_keys,
    cast([] as Array(String)) as set_once_values,
    {{ empty_ts }} as set_once_timestamps,
    cast([] as Array(String)) as unset_keys,
    {{ empty_ts }} as unset_timestamps,
    toUInt64({{ version }}) as computed_version,
    {{ recon_literal(invocation_id, 'string') }} as invocation_id,
    {{ null_ts }} as built_until,
    {{ null_ts }} as events_ingested_until,
    {{ null_ts }} as persons_ingested_until,
    {{ null_ts }} as overrides_ingested_until
from (
    select
        team_id,
        person_id
    from dirty
    union distinct
    -- teams computed in full: every person a previous (unfinished) build left for them
    select
        team_id,
        person_id
    from {{ this }}
    where {{ recon_diff_grid_filter() }}
        and person_id != {{ nil }}
        and {{ recon_team_filter('team_id') }}
        and team_id not in (select team_id from ledger)
)
{%- endif %}
