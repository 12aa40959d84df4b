{{
    config(
        materialized='table',
        engine='MergeTree',
        order_by=['team_id', 'batch_index', 'person_id'],
    )
}}
{#-
  The diff the runner applies: one row per person with at least one entry, after the conflict filter
  of section 7, read from the per-person rows of int_person_property_diff__persons (which an
  incremental build recomputes only for the persons whose inputs changed); this table only numbers
  the batches and keeps the other teams' rows, so rebuilding it costs the number of diff rows. Contract with the runner: docs/contracts.md. A build replaces every row of the teams
  its team vars select and keeps the rows of all other teams (see _marts__models.yml).
-#}
{%- set v = recon_vars() %}
with persons as (
    -- the newest row of every person (ReplacingMergeTree), of the discovered teams, with a change
    select
        team_id,
        person_id,
        baseline_version,
        set_keys,
        set_values,
        set_timestamps,
        set_once_keys,
        set_once_values,
        set_once_timestamps,
        unset_keys,
        unset_timestamps
    from {{ ref('int_person_property_diff__persons') }} {{ recon_final() }}
    where {{ recon_diff_grid_filter() }}
        and has_diff = 1
        and team_id in (select team_id from {{ ref('int_teams__discovered') }})
)

select
    team_id,
    toUInt32(intDiv(
        row_number() over (partition by team_id order by person_id) - 1,
        {{ recon_literal(v['person_batch_size'], 'integer', bare=true) }}
    )) as batch_index,
    person_id,
    baseline_version,
    set_keys,
    set_values,
    set_timestamps,
    set_once_keys,
    set_once_values,
    set_once_timestamps,
    unset_keys,
    unset_timestamps,
    {{ recon_literal(v['mode'], 'string') }} as mode,
    {{ recon_literal(v['semantics'], 'string') }} as semantics,
    {{ recon_ts('bug_window_start') }} as bug_window_start,
    {{ recon_ts('bug_window_end') }} as bug_window_end,
    {{ recon_ts('now') }} as computed_at,
    {{ recon_literal(invocation_id, 'string') }} as invocation_id
from persons
{{ recon_keep_other_teams(
    'team_id, batch_index, person_id, baseline_version, set_keys, set_values, set_timestamps, '
    ~ 'set_once_keys, set_once_values, set_once_timestamps, unset_keys, unset_timestamps, '
    ~ 'mode, semantics, bug_window_start, bug_window_end, computed_at, invocation_id',
    added={'semantics': "'original'"}) }}
