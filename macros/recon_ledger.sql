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


{#-
  The events an incremental build of int_person_property_ops__by_window reads, per team of its CTE
  `built`: those with a timestamp from the previous build's `read_from` on, or ingested from its
  `ingested_from` on, and every event of the teams without a previous build. An OR of the two times
  can use no index, so every event's time columns were scanned on every build; the model reads three
  disjoint branches of the same select instead (UNION ALL), each with conditions ClickHouse prunes
  granules with:
    new_teams       teams without a previous build: all their events (primary key, team_id);
    event_time      timestamp >= read_from (primary key, toDate(timestamp));
    ingestion_time  ingested >= ingested_from and timestamp < read_from (PostHog's minmax skip index
                    `minmax_inserted_at` on COALESCE(inserted_at, _timestamp), the ingestion time).
  Each branch also compares with the smallest bound over the teams, a constant (scalar subquery) the
  index analysis can use; the per-team bound keeps the exact rows. The branches are disjoint, so every
  event is read once, as before: the counter cells stay exact. `all` (a full build): no filter.
  index_settings: recon_ingestion_index_settings() rendered once by the caller (one query, not one per use).
-#}
{% macro recon_new_rows_filter(branch, relation='built', read_from='read_from', ingested_from='ingested_from', also='',
                                index_settings=none) -%}
  {%- set team_read_from = recon_team_lookup('team_id', relation, read_from, recon_ts('bug_window_start')) -%}
  {%- set team_ingested_from = recon_team_lookup('team_id', relation, ingested_from, recon_ts('bug_window_start')) -%}
  {%- if branch == 'new_teams' -%}
    where team_id not in (select team_id from {{ relation }}){{ also }}
  {%- elif branch == 'event_time' -%}
    where team_id in (select team_id from {{ relation }}){{ also }}
        and timestamp >= (select min({{ read_from }}) from {{ relation }})
        and timestamp >= {{ team_read_from }}
  {%- elif branch == 'ingestion_time' -%}
    where team_id in (select team_id from {{ relation }}){{ also }}
        and ingested_at >= (select min({{ ingested_from }}) from {{ relation }})
        and ingested_at >= {{ team_ingested_from }}
        and timestamp < {{ team_read_from }}
    {{ recon_ingestion_index_settings() if index_settings is none else index_settings }}
  {%- endif -%}
{%- endmacro %}


{#-
  ClickHouse 26.x rewrites `coalesce(a, b) >= c` into conditions on each column before it looks for a
  skip index on the coalesce expression itself (setting allow_key_condition_coalesce_rewrite), so
  PostHog's `minmax_inserted_at` index on COALESCE(inserted_at, _timestamp) is never used. The
  setting, on the read of the ingestion branch, turns that rewrite off where the engine has it (older
  engines match the index directly and do not know the setting).
-#}
{% macro recon_ingestion_index_settings() -%}
  {%- if execute -%}
    {%- set found = run_query(
        "select count() from system.settings where name = 'allow_key_condition_coalesce_rewrite'") -%}
    {%- if found.rows[0][0] | int > 0 -%}settings allow_key_condition_coalesce_rewrite = 0{%- endif -%}
  {%- endif -%}
{%- endmacro %}


{#-
  Pre-hooks of int_person_property_ops__by_window (incremental builds): per team of the scope, where
  the previous builds of this grid stopped, written once into a small table `<model>__built` (team_id,
  read_from, ingested_from) that the model's filters read many times (scalar subqueries and sets), so
  the ledger rows are looked up once instead of once per use. Left in place after the build.
    read_from      whole hours of event time: every counter cell of the hour is counted again in full;
    ingested_from  the newest ingested event read, minus the overlap, rounded down to whole hours of
                   ingestion time, likewise.
-#}
{% macro recon_built_relation() -%}
  {{ this.schema }}.`{{ this.identifier }}__built`
{%- endmacro %}

{% macro recon_drop_built() %}
  drop table if exists {{ recon_built_relation() }}
{% endmacro %}

{% macro recon_build_ops_ledger() %}
  {%- if is_incremental() %}
  create table {{ recon_built_relation() }}
  engine = MergeTree
  order by team_id
  as
  select
      ledger.team_id as team_id,
      toDateTime64(toStartOfHour(max(ledger.built_until)), 6, 'UTC') as read_from,
      toDateTime64(
          toStartOfHour(coalesce(max(ledger.ingested_until), max(ledger.built_until)) - {{ recon_overlap() }}), 6, 'UTC'
      ) as ingested_from
  from {{ this }} as ledger
  where {{ recon_grid_filter('ledger') }}
      -- the ledger rows' nil person, empty distinct_id and key: the primary key finds them
      and ledger.event_person_id = {{ recon_nil_uuid() }}
      and ledger.distinct_id = ''
      and ledger.key = ''
      and ledger.built_until is not null
      and {{ recon_team_filter('ledger.team_id') }}
  group by ledger.team_id
  {%- else %}
  select 1
  {%- endif %}
{% endmacro %}
