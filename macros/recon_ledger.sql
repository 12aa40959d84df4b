{#-
  Post-hook of int_person_property_ops__by_window: once the slices of this build are inserted, record
  for every team of the build's scope that has events in this grid that it is built up to `now`.
  Written after the insert on purpose: a run that dies before this statement leaves the ledger where
  it was, so the next run rebuilds the same slices (same slice_start), and the max/min merge of the
  table makes that re-insert harmless.
  Ledger rows: window_start = slice_start = built_until = now, person_id = nil uuid, key = ''.
-#}
{% macro recon_record_built_until() %}
  {%- set v = recon_vars() -%}
  insert into {{ this }}
      (team_id, bug_window_start, bug_window_end, window_seconds, window_start, slice_start, person_id, key, built_until)
  select
      team_id,
      {{ recon_ts('bug_window_start') }},
      {{ recon_ts('bug_window_end') }},
      toUInt32({{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}),
      {{ recon_ts('now') }},
      {{ recon_ts('now') }},
      {{ recon_nil_uuid() }},
      '',
      {{ recon_ts('now') }}
  from {{ this }}
  where {{ recon_grid_filter() }}
    and {{ recon_team_filter('team_id') }}
    and events > 0
  group by team_id
{% endmacro %}


{#-
  Windows already built are never recomputed, so a build whose `now` is earlier than what a team
  already holds in this grid would mix events beyond `now` into the diff: refuse it.
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
