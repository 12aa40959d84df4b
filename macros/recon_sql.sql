{#- SQL fragments shared by the models. All values come from recon_vars() through recon_literal. -#}

{#- Spec R5.6: operations on these keys are dropped for SET, SET_ONCE and UNSET alike. -#}
{% macro recon_blocklist() %}
  {{ return([
    '$current_url', '$pathname', '$referring_domain', '$referrer',
    '$screen_height', '$screen_width', '$viewport_height', '$viewport_width',
    '$browser', '$browser_version', '$device_type', '$raw_user_agent', '$os', '$os_name', '$os_version',
    '$geoip_postal_code', '$geoip_time_zone', '$geoip_latitude', '$geoip_longitude', '$geoip_accuracy_radius',
    '$geoip_subdivision_1_code', '$geoip_subdivision_1_name', '$geoip_subdivision_2_code', '$geoip_subdivision_2_name',
    '$geoip_subdivision_3_code', '$geoip_subdivision_3_name',
    '$geoip_city_confidence', '$geoip_country_confidence', '$geoip_postal_code_confidence',
    '$geoip_subdivision_1_confidence', '$geoip_subdivision_2_confidence',
  ]) }}
{% endmacro %}

{% macro recon_blocklist_sql() -%}
  [{% for key in recon_blocklist() %}{{ recon_literal(key, 'string') }}{% if not loop.last %}, {% endif %}{% endfor %}]
{%- endmacro %}


{#- Spec R4.2: the team filters, combined with AND; empty lists mean no filter. -#}
{% macro recon_team_filter(column='team_id') -%}
  {%- set v = recon_vars() -%}
  {%- set parts = [] -%}
  {%- if v['team_ids'] -%}{%- do parts.append(column ~ ' in ' ~ recon_literal(v['team_ids'], 'integers')) -%}{%- endif -%}
  {%- if v['min_team_id'] is not none -%}{%- do parts.append(column ~ ' >= ' ~ recon_literal(v['min_team_id'], 'integer', bare=true)) -%}{%- endif -%}
  {%- if v['max_team_id'] is not none -%}{%- do parts.append(column ~ ' <= ' ~ recon_literal(v['max_team_id'], 'integer', bare=true)) -%}{%- endif -%}
  {%- if v['exclude_team_ids'] -%}{%- do parts.append(column ~ ' not in ' ~ recon_literal(v['exclude_team_ids'], 'integers')) -%}{%- endif -%}
  {%- if parts -%}({{ parts | join(' and ') }}){%- else -%}true{%- endif -%}
{%- endmacro %}


{% macro recon_ts(name) -%}
  {{ recon_literal(recon_vars()[name], 'timestamp') }}
{%- endmacro %}

{#- One aggregated operation: ordered by (at, event_uuid, position, value), the tie-break of R5.9. -#}
{% macro recon_operation_type() -%}
  Tuple(at DateTime64(6, 'UTC'), event_uuid UUID, position UInt32, value String)
{%- endmacro %}

{% macro recon_nil_uuid() -%}
  toUUID('00000000-0000-0000-0000-000000000000')
{%- endmacro %}


{#-
  The storage grid of int_person_property_ops__by_window. Windows start at W0 and are split at W1:
    window_seconds > 0:  [W0 + k*window_seconds, ...), the one containing W1 split at W1 (spec R8.1);
    window_seconds = 0:  [W0, W1) and [W1, ...) (single pass needs no finer windows).
  Rows of other grids (earlier builds with other W0/W1/window_seconds) are ignored by every reader.
-#}
{% macro recon_window_start(ts) -%}
  {%- set v = recon_vars() -%}
  {%- set w0 = recon_ts('bug_window_start') -%}
  {%- set w1 = recon_ts('bug_window_end') -%}
  {%- if v['grid_seconds'] > 0 -%}
    {%- set step = recon_literal(v['grid_seconds'], 'integer', bare=true) -%}
    if({{ ts }} >= {{ w1 }} and {{ w0 }} + toIntervalSecond(intDiv(toUnixTimestamp({{ ts }}) - toUnixTimestamp({{ w0 }}), {{ step }}) * {{ step }}) < {{ w1 }},
       {{ w1 }},
       {{ w0 }} + toIntervalSecond(intDiv(toUnixTimestamp({{ ts }}) - toUnixTimestamp({{ w0 }}), {{ step }}) * {{ step }}))
  {%- else -%}
    if({{ ts }} >= {{ w1 }}, {{ w1 }}, {{ w0 }})
  {%- endif -%}
{%- endmacro %}

{% macro recon_grid_filter(alias=none) -%}
  {%- set v = recon_vars() -%}
  {%- set p = (alias ~ '.') if alias else '' -%}
  {{ p }}bug_window_start = {{ recon_ts('bug_window_start') }}
  and {{ p }}bug_window_end = {{ recon_ts('bug_window_end') }}
  and {{ p }}window_seconds = {{ recon_literal(v['grid_seconds'], 'integer', bare=true) }}
{%- endmacro %}

{#- The rows of int_person_property_diff__persons of this build's grid and semantics (a build under one
    semantics never reuses the persons computed under the other). -#}
{% macro recon_diff_grid_filter(alias=none) -%}
  {%- set p = (alias ~ '.') if alias else '' -%}
  {{ recon_grid_filter(alias) }}
  and {{ p }}semantics = {{ recon_literal(recon_vars()['semantics'], 'string') }}
{%- endmacro %}


{#-
  Whether two raw JSON texts (ClickHouse's re-serialisation, as SET values and state values are stored)
  hold different JSON VALUES. Deliberate difference from the original, which compared raw texts in the
  single pass (R6.4, R6.6) and decoded values with Python equality in windowed mode (R8.6): recon uses one
  rule in both modes, the one the runner applies with (runner/rules/merge.py json_equal):
    - object member order never matters (after a repair the state comes back from Postgres jsonb with
      its keys reordered; a raw-text comparison would find the same difference forever);
    - string escapes never matter and numbers compare by value (1 = 1.0 = 1e0); ClickHouse's raw texts
      already normalise both, so this mostly matters for values written by other means;
    - booleans never equal numbers (true != 1, unlike Python's equality in the original's R8.6);
    - arrays compare element by element, in order.
  How: equal raw texts are equal (no further work, the common case); different texts that are both
  plain (recon_json_is_plain: a string without escapes, an integer, true, false, null) differ without
  further work (the common case of a real difference). Otherwise each text is
  canonicalised by casting it, wrapped as {"v":[value]}, to the JSON type and printing it back
  (recon_json_canonical: keys sorted at every level, escapes decoded, numbers printed by value). The JSON
  type stores paths, which loses some information; what matters is put back:
    - a member holding null or {} would vanish ({"a":null}, {"a":{}} and {} would be alike): before the
      cast, the texts `:null` and `:{}` become two improbable number literals (a raw text is compact, so
      a member's value follows its colon directly; inside a string the same replacement happens on
      both sides and keeps the text valid JSON);
    - booleans in an array that also holds numbers would be read as numbers ([true,1] like [1,1]): the
      counts of `true` and `false` must also be equal (recon_json_bool_tokens, a cheap check first).
  Residual quirks (kept, mirrored or documented in tests/reference_rules.py): a dotted key equals the
  nested path ({"a.b":1} like {"a":{"b":1}}); [true,1] like [1,true]; in an array mixing integers and
  floats, integers are compared as doubles. A value the JSON type refuses (duplicate paths such as
  {"a":1,"a":2}, nesting deeper than 1000, numbers out of double range) falls back to its raw text, so it
  differs from every other text: a diff run never fails on user data.
-#}
{% macro recon_json_canonical(raw) -%}
  ifNull(
    toJSONString(accurateCastOrNull(
      concat('{"v":[', replaceAll(replaceAll({{ raw }}, ':null', ':-1.234567890123e-300'), ':{}', ':-9.876543210987e-300'), ']}'),
      'JSON')),
    concat('raw:', {{ raw }}))
{%- endmacro %}

{% macro recon_json_bool_tokens(raw) -%}
  tuple(countSubstrings({{ raw }}, 'true'), countSubstrings({{ raw }}, 'false'))
{%- endmacro %}

{#- A text whose value is its text: a string without escapes, an integer in canonical form, true, false, null. -#}
{% macro recon_json_is_plain(raw) -%}
  match({{ raw }}, '^(?:"[^"\\\\]*"|0|-?[1-9][0-9]*|true|false|null)$')
{%- endmacro %}

{% macro recon_json_differs(left, right) -%}
  ({{ left }} != {{ right }}
    and ({{ recon_json_bool_tokens(left) }} != {{ recon_json_bool_tokens(right) }}
      or ({{ recon_json_is_plain(left) }} and {{ recon_json_is_plain(right) }})
      or {{ recon_json_canonical(left) }} != {{ recon_json_canonical(right) }}))
{%- endmacro %}


{#-
  Spec R6.4 and section 7 for one (person, key), given:
    last_set        Nullable(Tuple(at, event_uuid, position, value))  latest SET (R5.7, tie-break R5.9)
    first_set_once  Nullable(Tuple(at, event_uuid, position, value))  earliest SET_ONCE
    last_unset_at   Nullable(DateTime64)                               latest UNSET
    in_state, state_value (columns)   whether the current CH state has the key, and its raw value
                                      ('' when absent) (R2.2, R6.3)
  Emits the columns in_set, in_set_once, in_unset (R6.4) and keep_set, keep_set_once, keep_unset (after R7).
-#}
{% macro recon_key_decisions(last_set='last_set', first_set_once='first_set_once', last_unset_at='last_unset_at') -%}
    tupleElement(assumeNotNull({{ last_set }}), 1) as set_at,
    tupleElement(assumeNotNull({{ last_set }}), 4) as set_value,
    tupleElement(assumeNotNull({{ first_set_once }}), 1) as set_once_at,
    tupleElement(assumeNotNull({{ first_set_once }}), 4) as set_once_value,
    assumeNotNull({{ last_unset_at }}) as unset_at,
    -- R6.4: SET only changes a key the person has, to a different JSON value (recon_json_differs);
    -- SET_ONCE only fills an absent key; UNSET only removes a present key (presence counts a JSON null
    -- value as present).
    {{ last_set }} is not null and in_state and {{ recon_json_differs('set_value', 'state_value') }} as in_set,
    {{ first_set_once }} is not null and not in_state as in_set_once,
    {{ last_unset_at }} is not null and in_state as in_unset,
    -- R7.1: SET against UNSET, the later one wins, UNSET on equal timestamps.
    -- R7.2: SET_ONCE against the original UNSET, same rule (never both with one CH state, R6.6).
    in_set and not (in_unset and set_at <= unset_at) as keep_set,
    in_set_once and not (in_unset and set_once_at <= unset_at) as keep_set_once,
    in_unset and not (in_set and set_at > unset_at) and not (in_set_once and set_once_at > unset_at) as keep_unset
{%- endmacro %}


{#-
  Ingestion time of an event: `inserted_at` (ClickHouse's clock at the insert, close to when the row
  became visible), else `_timestamp` (the Kafka message time) for rows written before `inserted_at`
  existed. The incremental builds' watermark is on this time; the event `timestamp` stays the
  semantic filter [W0, now). Written as PostHog's `minmax_inserted_at` skip index on events has it
  (COALESCE(inserted_at, _timestamp), type DateTime64(6, 'UTC')), so that a filter on it can use it.
-#}
{% macro recon_event_ingested_at(alias=none) -%}
  {%- set p = (alias ~ '.') if alias else '' -%}
  coalesce({{ p }}inserted_at, {{ p }}_timestamp)
{%- endmacro %}

{#- Per team value looked up from a two-column CTE/table (team_id, value), `default` for other teams. -#}
{% macro recon_team_lookup(team_column, relation, value_column, default) -%}
  transform(
      {{ team_column }},
      (select groupArray(team_id) from {{ relation }}),
      (select groupArray({{ value_column }}) from {{ relation }}),
      {{ default }})
{%- endmacro %}

{% macro recon_overlap() -%}
  toIntervalSecond({{ recon_literal(recon_vars()['ingestion_overlap_seconds'], 'integer', bare=true) }})
{%- endmacro %}

{#- FINAL on a ReplacingMergeTree read; left out in unit tests, whose inputs are plain subqueries. -#}
{% macro recon_final() -%}
  {%- if model.resource_type == 'model' or model.resource_type == 'analysis' %}final{% endif -%}
{%- endmacro %}
