{#-
  The marts are rebuilt into a new table and swapped in atomically (EXCHANGE TABLES). To replace only
  the teams of this build, the new table also receives the current rows of every team the team vars do
  not select. Not in unit tests (no table to carry over) and not on the first build.
-#}
{% macro recon_keep_other_teams(columns) %}
  {%- if execute and model.resource_type == 'model' -%}
    {%- set existing = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) -%}
    {%- if existing is not none and not flags.FULL_REFRESH %}
union all
select {{ columns }}
from {{ this }}
where not {{ recon_team_filter('team_id') }}
    {%- endif -%}
  {%- endif -%}
{% endmacro %}
