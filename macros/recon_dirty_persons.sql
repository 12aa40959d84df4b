{#-
  The "dirty" persons of an incremental build of int_person_property_diff__persons (see its yml), as a
  small table `<model>__dirty` (team_id, person_id) written by the model's pre-hooks, so that the
  model reads the set once instead of recomputing it in every subquery that uses it. It is left in
  place after the build: it lists the persons the last build recomputed.
-#}
{% macro recon_dirty_relation() -%}
  {{ this.schema }}.`{{ this.identifier }}__dirty`
{%- endmacro %}

{% macro recon_drop_dirty_persons() %}
  drop table if exists {{ recon_dirty_relation() }}
{% endmacro %}

{#- The previous build's ledger rows per team (recon_diff_ledger_rows), written once by a pre-hook into
    `<model>__ledger`: the dirty set and the model read them many times (sets, scalar subqueries). -#}
{% macro recon_ledger_relation() -%}
  {{ this.schema }}.`{{ this.identifier }}__ledger`
{%- endmacro %}

{% macro recon_drop_diff_ledger() %}
  drop table if exists {{ recon_ledger_relation() }}
{% endmacro %}

{% macro recon_build_diff_ledger() %}
  {%- if is_incremental() %}
  create table {{ recon_ledger_relation() }}
  engine = MergeTree
  order by team_id
  as
{{ recon_diff_ledger_rows() }}
  {%- else %}
  select 1
  {%- endif %}
{% endmacro %}

{% macro recon_build_dirty_persons() %}
  {%- if is_incremental() %}
  create table {{ recon_dirty_relation() }}
  engine = MergeTree
  order by (team_id, person_id)
  as
  with
  ledger as (
    select * from {{ recon_ledger_relation() }}
  ),

  -- (team, distinct_id, event person) groups with operations new since that build: new event time, or
-- ingested since its watermark minus the overlap. Only operation rows count: an event without an
-- operation changes no state the diff reads (its counters feed the summary, not the diff). They are
-- found in the aggregation itself, not by extracting the new events' operations again: an operation
-- row carries the newest ingestion time of its operations (ingested_max) and the newest time of each
-- kind (last_set, last_unset_at, last_set_once_at), merged by max, so a group that received an
-- operation ingested at or after events_from, or timed at or after read_from, has a row saying so.
-- The diff reads the operations from the aggregation only, so the groups whose rows there changed
-- are exactly the ones to recompute (a superset: rows re-read in the overlap qualify again).
-- Upgrading: operation rows written before ingested_max existed hold NULL there; a build whose
-- aggregation ran under the old version and whose diff did not is caught up by --full-refresh.
touched_groups as (
    select distinct
        group_rows.team_id as team_id,
        group_rows.distinct_id as distinct_id,
        group_rows.event_person_id as event_person_id
    from {{ ref('int_person_property_ops__by_window') }} as group_rows
    where {{ recon_grid_filter('group_rows') }}
        and group_rows.team_id in (select team_id from ledger)
        and {{ recon_op_states_present('group_rows') }}
        and (
            group_rows.ingested_max >= {{ recon_team_lookup(
                'group_rows.team_id', 'ledger', 'assumeNotNull(events_from)', recon_ts('bug_window_start')) }}
            or greatest(
                ifNull(tupleElement(group_rows.last_set, 1), {{ recon_ts('bug_window_start') }}),
                ifNull(group_rows.last_unset_at, {{ recon_ts('bug_window_start') }}),
                ifNull(group_rows.last_set_once_at, {{ recon_ts('bug_window_start') }})
            ) >= {{ recon_team_lookup(
                'group_rows.team_id', 'ledger', 'assumeNotNull(read_from)', recon_ts('bug_window_start')) }}
        )
),

-- distinct_ids with override rows ingested since that build (merges, reassignments, withdrawals)
changed_distinct_ids as (
    select distinct
        team_id,
        distinct_id
    from {{ source('posthog', 'person_distinct_id_overrides') }}
    where team_id in (select team_id from ledger)
        -- a constant bound, for the minmax index on _timestamp; the team's own bound below
        and _timestamp >= (select min(assumeNotNull(overrides_from)) from ledger)
        and _timestamp >= {{ recon_team_lookup(
            'team_id', 'ledger', 'assumeNotNull(overrides_from)', recon_ts('bug_window_start')) }}
),

dirty as (
    -- new operations: the person their group resolves to now
    select
        touched.team_id as team_id,
        if(overrides.distinct_id != '', overrides.person_id, touched.event_person_id) as person_id
    from touched_groups as touched
    left join {{ ref('base_posthog__live_distinct_id_overrides') }} as overrides
        on touched.team_id = overrides.team_id
            and touched.distinct_id = overrides.distinct_id
    union distinct
    -- new person rows: new versions (caught up by ingestion, repaired) and deletions
    select
        team_id,
        id as person_id
    from {{ source('posthog', 'person') }}
    where team_id in (select team_id from ledger)
        -- a constant bound, for the minmax index on _timestamp; the team's own bound below
        and _timestamp >= (select min(assumeNotNull(persons_from)) from ledger)
        and _timestamp >= {{ recon_team_lookup(
            'team_id', 'ledger', 'assumeNotNull(persons_from)', recon_ts('bug_window_start')) }}
    union distinct
    -- new override rows: every person their distinct_ids were or are attached to (a superset)
    select
        team_id,
        person_id
    from {{ source('posthog', 'person_distinct_id_overrides') }}
    where (team_id, distinct_id) in (
        select
            team_id,
            distinct_id
        from changed_distinct_ids
    )
    union distinct
    select
        team_id,
        event_person_id as person_id
    from {{ ref('int_person_property_ops__by_window') }}
    where {{ recon_grid_filter() }}
        -- the teams with changed overrides only: the primary key (team_id first) skips the others
        and team_id in (select team_id from changed_distinct_ids)
        and (team_id, distinct_id) in (
            select
                team_id,
                distinct_id
            from changed_distinct_ids
        )
)

  select distinct
      team_id,
      person_id
  from dirty
  {%- else %}
  select 1
  {%- endif %}
{% endmacro %}


{#- Per team, where the previous build of int_person_property_diff__persons stopped (its ledger row);
    read from the table the pre-hook wrote (recon_build_diff_ledger). -#}
{% macro recon_diff_ledger() %}
    select
        team_id,
        read_from,
        events_from,
        persons_from,
        overrides_from
    from {{ recon_ledger_relation() }}
{% endmacro %}

{% macro recon_diff_ledger_rows() %}
    -- per team, where the previous build of this grid stopped (its post-hook's ledger row)
    select
        ledger_rows.team_id as team_id,
        argMax(ledger_rows.built_until, ledger_rows.computed_version) as read_from,
        argMax(ledger_rows.events_ingested_until, ledger_rows.computed_version) - {{ recon_overlap() }} as events_from,
        argMax(ledger_rows.persons_ingested_until, ledger_rows.computed_version) - {{ recon_overlap() }} as persons_from,
        argMax(ledger_rows.overrides_ingested_until, ledger_rows.computed_version) - {{ recon_overlap() }} as overrides_from
    from {{ this }} as ledger_rows
    where {{ recon_diff_grid_filter('ledger_rows') }}
        and ledger_rows.person_id = {{ recon_nil_uuid() }}
        and ledger_rows.built_until is not null
        and {{ recon_team_filter('ledger_rows.team_id') }}
    group by ledger_rows.team_id
{% endmacro %}
