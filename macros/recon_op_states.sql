{#-
  The mergeable states kept per (team, window, distinct_id, event person, key) in
  int_person_property_ops__by_window, and merged per resolved person when the diff is built.

  Every state is a SimpleAggregateFunction (max or min): inserting the same events twice, or a window
  in several slices, merges to the same value, which is what lets an incremental build re-read an
  overlap of already aggregated events safely. To add a state, add one entry here:
    name   column name (in the aggregation and, merged, in int_person_property_diff__persons)
    merge  max or min (the SimpleAggregateFunction and the function that merges rows)
    type   its ClickHouse type (Nullable: NULL = no such operation in the rows merged)
    expr   its aggregate over the operations of stg_posthog__property_operations (columns kind,
           timestamp, event_uuid, position, value)
  last_set_once_at serves `semantics: replay` (macros/recon_replay.sql): whether a SET_ONCE follows
  the latest UNSET.
  Readers iterate over this list (recon_op_states_select, recon_op_states_merge), so a new entry
  needs no other change to be stored and merged; only the decisions that use it do.
-#}
{% macro recon_op_states() %}
  {%- set op = recon_operation_type() -%}
  {{ return([
    {'name': 'last_set', 'merge': 'max', 'type': 'Nullable(' ~ op ~ ')',
     'expr': "maxOrNullIf(tuple(timestamp, event_uuid, position, value), kind = 'set')"},
    {'name': 'first_set_once', 'merge': 'min', 'type': 'Nullable(' ~ op ~ ')',
     'expr': "minOrNullIf(tuple(timestamp, event_uuid, position, value), kind = 'set_once')"},
    {'name': 'last_unset_at', 'merge': 'max', 'type': "Nullable(DateTime64(6, 'UTC'))",
     'expr': "maxOrNullIf(timestamp, kind = 'unset')"},
    {'name': 'last_set_once_at', 'merge': 'max', 'type': "Nullable(DateTime64(6, 'UTC'))",
     'expr': "maxOrNullIf(timestamp, kind = 'set_once')"},
  ]) }}
{% endmacro %}

{#- The states as aggregated from operations (real=true) or as typed NULLs (rows of other kinds). -#}
{% macro recon_op_states_select(real=true) -%}
  {%- for s in recon_op_states() %}
    cast({{ s.expr if real else 'null' }} as SimpleAggregateFunction({{ s.merge }}, {{ s.type }})) as {{ s.name }}{{ ',' if not loop.last }}
  {%- endfor %}
{%- endmacro %}

{#- The states merged over rows (group by), optionally only over the rows where `condition` holds;
    `more` = further select items follow (a trailing comma). -#}
{% macro recon_op_states_merge(alias, prefix='', condition=none, more=false) -%}
  {%- for s in recon_op_states() %}
    {%- if condition %}
    {{ s.merge }}OrNullIf({{ alias }}.{{ s.name }}, {{ condition }}) as {{ prefix }}{{ s.name }}{{ ',' if more or not loop.last }}
    {%- else %}
    {{ s.merge }}({{ alias }}.{{ s.name }}) as {{ prefix }}{{ s.name }}{{ ',' if more or not loop.last }}
    {%- endif %}
  {%- endfor %}
{%- endmacro %}

{#- A row carries at least one operation. -#}
{% macro recon_op_states_present(alias) -%}
  ({% for s in recon_op_states() %}{{ alias }}.{{ s.name }} is not null{{ ' or ' if not loop.last }}{% endfor %})
{%- endmacro %}

{#- The states of a row, as they are (`alias.name as name`), or their bare names. -#}
{% macro recon_op_states_columns(alias) -%}
  {%- for s in recon_op_states() %}
    {{ alias }}.{{ s.name }} as {{ s.name }}{{ ',' if not loop.last }}
  {%- endfor %}
{%- endmacro %}

{% macro recon_op_states_names() -%}
  {%- for s in recon_op_states() %}
    {{ s.name }}{{ ',' if not loop.last }}
  {%- endfor %}
{%- endmacro %}
