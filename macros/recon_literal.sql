{#-
  The one place where values become SQL text. Only validated values (macros/recon_vars.sql) reach it,
  and it re-checks the shape of what it renders, so a value that slipped past validation still cannot
  break out of its literal.

  kinds:
    'timestamp'  'YYYY-MM-DD HH:MM:SS'  ->  toDateTime64('...', 6, 'UTC')
    'integer'    int                    ->  toInt64(n)   (or a bare n with bare=true)
    'integers'   list of int            ->  (a, b, c)    (for IN; never empty, callers check)
    'string'     text                   ->  '...'        (backslash and quote escaped)
-#}
{% macro recon_literal(value, kind, bare=false) %}
  {%- if kind == 'timestamp' -%}
    {%- if value is not string or not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}', value) -%}
      {{ exceptions.raise_compiler_error("recon_literal: not a timestamp: " ~ (value | string | tojson)) }}
    {%- endif -%}
    {{- "toDateTime64('" ~ value ~ "', 6, 'UTC')" -}}
  {%- elif kind == 'integer' -%}
    {%- if value is not integer or value is sameas true or value is sameas false -%}
      {{ exceptions.raise_compiler_error("recon_literal: not an integer: " ~ (value | string | tojson)) }}
    {%- endif -%}
    {{- (value | string) if bare else ('toInt64(' ~ value ~ ')') -}}
  {%- elif kind == 'integers' -%}
    {%- set parts = [] -%}
    {%- for item in value -%}
      {%- if item is not integer or item is sameas true or item is sameas false -%}
        {{ exceptions.raise_compiler_error("recon_literal: not an integer: " ~ (item | string | tojson)) }}
      {%- endif -%}
      {%- do parts.append(item | string) -%}
    {%- endfor -%}
    {%- if parts | length == 0 -%}
      {{ exceptions.raise_compiler_error("recon_literal: empty integer list") }}
    {%- endif -%}
    {{- '(' ~ parts | join(', ') ~ ')' -}}
  {%- elif kind == 'string' -%}
    {{- "'" ~ (value | string).replace('\\', '\\\\').replace("'", "\\'") ~ "'" -}}
  {%- else -%}
    {{ exceptions.raise_compiler_error("recon_literal: unknown kind " ~ kind) }}
  {%- endif -%}
{% endmacro %}
