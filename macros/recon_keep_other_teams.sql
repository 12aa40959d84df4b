{#-
  The marts are rebuilt into a new table and swapped in atomically (EXCHANGE TABLES). To replace only
  the teams of this build, the new table also receives the current rows of every team the team vars do
  not select. Not in unit tests (no table to carry over) and not on the first build.
  `added`: columns newer than some existing tables, as {name: SQL value for rows built before them}.
-#}
{% macro recon_keep_other_teams(columns, added={}) %}
  {%- if execute and model.resource_type == 'model' -%}
    {%- set existing = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) -%}
    {%- if existing is not none and not flags.FULL_REFRESH %}
      {%- set present = adapter.get_columns_in_relation(existing) | map(attribute='name') | list -%}
      {%- set selected = [] -%}
      {%- for column in columns.split(',') | map('trim') -%}
        {%- do selected.append(column if column in present or column not in added else added[column] ~ ' as ' ~ column) -%}
      {%- endfor %}
union all
select {{ selected | join(', ') }}
from {{ this }}
where not {{ recon_team_filter('team_id') }}
    {%- endif -%}
  {%- endif -%}
{% endmacro %}
