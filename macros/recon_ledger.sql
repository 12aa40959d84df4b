{#-
  Post-hook of int_person_property_ops__by_window: once the rows of this build are inserted, record
  for every team of the build's scope that has events in this grid that it is built up to `now` (event
  time) and up to the newest ingested event read so far (ingestion time, the watermark).
  Written after the insert on purpose: a run that dies before this statement leaves the ledger where
  it was, so the next run reads the same events again, and the max/min merge of the table makes that
  re-insert harmless.
  Ledger rows: window_start = slice_start = ingested_slice = built_until = now, nil person, empty
  distinct_id and key.
-#}
{% macro recon_record_built_until() %}
  {%- set v = recon_vars() -%}
  insert into {{ this }}
      (team_id, bug_window_start, bug_window_end, window_seconds, event_person_id, distinct_id, key,
       window_start, slice_start, ingested_slice, built_until, ingested_until)
  select
      team_id,
      {{ recon_ts('bug_window_start') }},
      {{ recon_ts('bug_window_end') }},
      toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}),
      {{ recon_nil_uuid() }},
      '',
      '',
      {{ recon_ts('now') }},
      {{ recon_ts('now') }},
      {{ recon_ts('now') }},
      {{ recon_ts('now') }},
      max(ingested_max)
  from {{ this }}
  where {{ recon_grid_filter() }}
    and {{ recon_team_filter('team_id') }}
    and event_person_id = {{ recon_nil_uuid() }}
    and events > 0
  group by team_id
{% endmacro %}


{#-
  Windows already built are never recomputed from scratch, so a build whose `now` is earlier than
  what a team already holds in this grid would mix events beyond `now` into the diff: refuse it.
-#}
{% macro recon_check_now_not_behind_ledger() %}
  {%- if execute -%}
    {%- set v = recon_vars() -%}
    {%- set ahead = run_query(
        "select team_id, max(built_until) from " ~ this ~ " where " ~ recon_grid_filter()
        ~ " and built_until is not null and " ~ recon_team_filter()
        ~ " group by team_id having max(built_until) > " ~ recon_ts('now') ~ " order by team_id limit 1") -%}
    {%- if ahead.rows | length > 0 -%}
      {{ exceptions.raise_compiler_error(
          "var now (" ~ v['now'] ~ ") is earlier than the events already aggregated for team "
          ~ ahead.rows[0][0] ~ " (up to " ~ ahead.rows[0][1] ~ "): windows already built are never "
          ~ "recomputed, so pass a later now, or rebuild with --full-refresh") }}
    {%- endif -%}
  {%- endif -%}
{% endmacro %}


{#-
  The version of the rows a build writes into int_person_property_diff__persons (ReplacingMergeTree):
  the microseconds of dbt's invocation start, so a later build's rows replace an earlier one's.
-#}
{% macro recon_build_version() -%}
  {{- ((run_started_at.timestamp() * 1000000) | int) * 2 -}}
{%- endmacro %}


{#-
  Post-hook of int_person_property_diff__persons: once the recomputed persons are inserted, record per
  team of the build's scope with aggregated events the watermarks this build covered: event time
  (`now`), ingestion of events (the aggregation's ledger), of person rows and of override rows (their
  newest `_timestamp`). The next build recomputes the persons touched by anything newer than these
  minus the overlap. Written last, so a crash leaves the previous watermarks (the next build then
  recomputes a superset).
-#}
{% macro recon_record_diffed_until() %}
  {%- set v = recon_vars() -%}
  insert into {{ this }}
      (team_id, bug_window_start, bug_window_end, window_seconds, semantics, person_id, computed_version, invocation_id,
       built_until, events_ingested_until, persons_ingested_until, overrides_ingested_until)
  select
      ops_ledger.team_id,
      {{ recon_ts('bug_window_start') }},
      {{ recon_ts('bug_window_end') }},
      toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}),
      {{ recon_literal(v['semantics'], 'string') }},
      {{ recon_nil_uuid() }},
      toUInt64({{ recon_build_version() }} + 1),
      {{ recon_literal(invocation_id, 'string') }},
      {{ recon_ts('now') }},
      ops_ledger.ingested_until,
      toDateTime64(person_rows.ingested_until, 6, 'UTC'),
      toDateTime64(override_rows.ingested_until, 6, 'UTC')
  from (
      select team_id, max(ingested_until) as ingested_until
      from {{ ref('int_person_property_ops__by_window') }}
      where {{ recon_grid_filter() }}
        and {{ recon_team_filter('team_id') }}
        and built_until is not null
      group by team_id
  ) as ops_ledger
  left join (
      select team_id, max(_timestamp) as ingested_until
      from {{ source('posthog', 'person') }}
      where {{ recon_team_filter('team_id') }}
      group by team_id
  ) as person_rows on ops_ledger.team_id = person_rows.team_id
  left join (
      select team_id, max(_timestamp) as ingested_until
      from {{ source('posthog', 'person_distinct_id_overrides') }}
      where {{ recon_team_filter('team_id') }}
      group by team_id
  ) as override_rows on ops_ledger.team_id = override_rows.team_id
{% endmacro %}


{#-
  In int_person_property_diff__persons: whether (team, person) is recomputed by this build - every
  person of a team without a previous build, else the dirty persons (its CTEs `ledger` and `dirty`).
-#}
{% macro recon_in_scope(team, person) -%}
  {%- if is_incremental() -%}
    ({{ team }} not in (select team_id from ledger) or ({{ team }}, {{ person }}) in (select team_id, person_id from dirty))
  {%- else -%}
    true
  {%- endif -%}
{%- endmacro %}
