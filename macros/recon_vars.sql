{#-
  The vars of the project, validated.

  `recon_vars()` returns a dict of checked, normalised values; every model reads the vars through it,
  and SQL receives them only through `recon_literal` (macros/recon_literal.sql). Any problem stops the
  run with an error that names the var and the problem. Nothing here touches the database.

  `now` may also come from the environment variable RECON_NOW (the var wins when both are set). It is
  read only when the run executes, never while dbt parses, so a scheduler (or the benchmark) that
  pins a different `now` on every build keeps the same `--vars` and dbt's partial parsing stays warm:
  dbt parses the whole project again whenever `--vars` differ from the previous invocation's.

  Returned keys:
    bug_window_start, bug_window_end, now  'YYYY-MM-DD HH:MM:SS' strings (UTC)
    team_ids, exclude_team_ids             lists of non-negative integers ([] = no filter)
    min_team_id, max_team_id               integer or none
    window_seconds                         integer >= 0
    grid_seconds                           window_seconds (0 in single-pass mode: one window before W1, one after)
    person_batch_size                      integer >= 1
    ingestion_overlap_seconds              integer >= 0
    source_database                        ClickHouse identifier
    mode                                   'single_pass' (window_seconds = 0) or 'windowed'
    semantics                              'original' (the original job's per-key rules) or 'replay'
-#}

{% macro recon_vars() %}
  {%- if not execute -%}
    {#- Parsing: vars may be absent (dbt parse, docs). Return placeholders; nothing is executed. -#}
    {{ return({
        'bug_window_start': '2000-01-01 00:00:00', 'bug_window_end': '2000-01-02 00:00:00',
        'now': '2000-01-03 00:00:00', 'team_ids': [], 'exclude_team_ids': [],
        'min_team_id': none, 'max_team_id': none, 'window_seconds': 0, 'grid_seconds': 0,
        'person_batch_size': 10000, 'ingestion_overlap_seconds': 3600, 'source_database': 'posthog',
        'mode': 'single_pass', 'semantics': 'original'}) }}
  {%- endif -%}
  {{ return(recon_check_vars({
      'bug_window_start': var('bug_window_start', none),
      'bug_window_end': var('bug_window_end', none),
      'now': var('now', none) if var('now', none) is not none else env_var('RECON_NOW', ''),
      'team_ids': var('team_ids', []),
      'exclude_team_ids': var('exclude_team_ids', []),
      'min_team_id': var('min_team_id', none),
      'max_team_id': var('max_team_id', none),
      'window_seconds': var('window_seconds', 0),
      'person_batch_size': var('person_batch_size', 10000),
      'ingestion_overlap_seconds': var('ingestion_overlap_seconds', 3600),
      'source_database': var('source_database', 'posthog'),
      'semantics': var('semantics', 'original'),
  })) }}
{% endmacro %}


{#- The checks, on a plain dict, so that they can be exercised without a dbt context. -#}
{% macro recon_check_vars(raw) %}
  {%- set checked = {} -%}

  {%- set start = recon_check_timestamp('bug_window_start', raw['bug_window_start'], required=true) -%}
  {%- set end = recon_check_timestamp('bug_window_end', raw['bug_window_end'], required=true,
        missing_hint='it bounds team discovery (spec R4.4) and is required even when team_ids are given') -%}
  {%- if end <= start -%}
    {{ exceptions.raise_compiler_error("var bug_window_end (" ~ end ~ ") must be after bug_window_start (" ~ start ~ ")") }}
  {%- endif -%}
  {%- set now = raw['now'] -%}
  {%- if now is none or (now is string and now | trim == '') -%}
    {%- set now = run_started_at.strftime('%Y-%m-%d %H:%M:%S') -%}
  {%- else -%}
    {%- set now = recon_check_timestamp('now', now, required=true) -%}
  {%- endif -%}

  {%- set team_ids = recon_check_team_list('team_ids', raw['team_ids']) -%}
  {%- set exclude_team_ids = recon_check_team_list('exclude_team_ids', raw['exclude_team_ids']) -%}
  {%- set min_team_id = recon_check_integer('min_team_id', raw['min_team_id'], minimum=0, nullable=true) -%}
  {%- set max_team_id = recon_check_integer('max_team_id', raw['max_team_id'], minimum=0, nullable=true) -%}
  {%- if min_team_id is not none and max_team_id is not none and min_team_id > max_team_id -%}
    {{ exceptions.raise_compiler_error("var min_team_id (" ~ min_team_id ~ ") is greater than var max_team_id (" ~ max_team_id ~ "): no team can match") }}
  {%- endif -%}

  {%- set window_seconds = recon_check_integer('window_seconds', raw['window_seconds'], minimum=0) -%}
  {%- set person_batch_size = recon_check_integer('person_batch_size', raw['person_batch_size'], minimum=1) -%}
  {%- set overlap = recon_check_integer('ingestion_overlap_seconds', raw.get('ingestion_overlap_seconds', 3600), minimum=0) -%}

  {%- set source_database = raw['source_database'] -%}
  {%- if source_database is not string or not modules.re.fullmatch('[A-Za-z_][A-Za-z0-9_]{0,127}', source_database) -%}
    {{ exceptions.raise_compiler_error("var source_database: " ~ recon_show(source_database) ~ " is not a plain ClickHouse database name (letters, digits and underscores, not starting with a digit)") }}
  {%- endif -%}

  {%- set semantics = raw.get('semantics', 'original') -%}
  {%- if semantics is none or (semantics is string and semantics | trim == '') -%}
    {%- set semantics = 'original' -%}
  {%- endif -%}
  {%- if semantics not in ['original', 'replay'] -%}
    {{ exceptions.raise_compiler_error("var semantics: " ~ recon_show(semantics) ~ " is not one of 'original' (the original job's per-key rules, the default) or 'replay' (each key's operations replayed in time order)") }}
  {%- endif -%}

  {{ return({
      'bug_window_start': start, 'bug_window_end': end, 'now': now,
      'team_ids': team_ids, 'exclude_team_ids': exclude_team_ids,
      'min_team_id': min_team_id, 'max_team_id': max_team_id,
      'window_seconds': window_seconds, 'grid_seconds': window_seconds,
      'person_batch_size': person_batch_size, 'ingestion_overlap_seconds': overlap,
      'source_database': source_database,
      'mode': 'windowed' if window_seconds > 0 else 'single_pass', 'semantics': semantics}) }}
{% endmacro %}


{#- A strict `YYYY-MM-DD HH:MM:SS` (UTC) timestamp; YAML may already have parsed it into a datetime. -#}
{% macro recon_check_timestamp(name, value, required=false, missing_hint='it is required') %}
  {%- if value is none or (value is string and value | trim == '') -%}
    {%- if required -%}
      {{ exceptions.raise_compiler_error("var " ~ name ~ " is missing: " ~ missing_hint ~ " (format YYYY-MM-DD HH:MM:SS, UTC)") }}
    {%- endif -%}
    {{ return(none) }}
  {%- endif -%}
  {%- if value is not string -%}
    {%- if value.strftime is defined and value.microsecond is defined and value.microsecond == 0
          and (value.tzinfo is none or value.utcoffset().total_seconds() == 0) -%}
      {{ return(value.strftime('%Y-%m-%d %H:%M:%S')) }}
    {%- endif -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ ": " ~ recon_show(value) ~ " is not a timestamp in the format YYYY-MM-DD HH:MM:SS (UTC, whole seconds)") }}
  {%- endif -%}
  {%- if not modules.re.fullmatch('[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}', value) -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ ": " ~ recon_show(value) ~ " is not a timestamp in the format YYYY-MM-DD HH:MM:SS (UTC)") }}
  {%- endif -%}
  {%- set parsed = recon_parse_timestamp(value) -%}
  {%- if parsed is none -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ ": " ~ recon_show(value) ~ " is not a valid date and time") }}
  {%- endif -%}
  {{ return(value) }}
{% endmacro %}


{% macro recon_parse_timestamp(value) %}
  {#- strptime raises on impossible dates (2026-02-30); Jinja cannot catch, so check the calendar by hand. -#}
  {%- set y = value[0:4] | int -%}
  {%- set mo = value[5:7] | int -%}
  {%- set d = value[8:10] | int -%}
  {%- set h = value[11:13] | int -%}
  {%- set mi = value[14:16] | int -%}
  {%- set s = value[17:19] | int -%}
  {%- set leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 -%}
  {%- set month_days = [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] -%}
  {%- if y < 1970 or y > 2299 or mo < 1 or mo > 12 or d < 1 or d > month_days[mo - 1] or h > 23 or mi > 59 or s > 59 -%}
    {{ return(none) }}
  {%- endif -%}
  {{ return(modules.datetime.datetime(y, mo, d, h, mi, s)) }}
{% endmacro %}


{#- An integer (not a boolean); digit strings are accepted, as `--vars` may carry them quoted. -#}
{% macro recon_check_integer(name, value, minimum=none, nullable=false) %}
  {%- if value is none or (value is string and value | trim == '') -%}
    {%- if nullable -%}{{ return(none) }}{%- endif -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ " is missing: an integer is required") }}
  {%- endif -%}
  {%- set number = recon_as_integer(value) -%}
  {%- if number is none -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ ": " ~ recon_show(value) ~ " is not an integer") }}
  {%- endif -%}
  {%- if minimum is not none and number < minimum -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ ": " ~ number ~ " is negative or too small (minimum " ~ minimum ~ ")") }}
  {%- endif -%}
  {%- if number > 9223372036854775807 -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ ": " ~ number ~ " does not fit in Int64") }}
  {%- endif -%}
  {{ return(number) }}
{% endmacro %}


{% macro recon_as_integer(value) %}
  {%- if value is sameas true or value is sameas false -%}{{ return(none) }}{%- endif -%}
  {%- if value is integer -%}{{ return(value) }}{%- endif -%}
  {%- if value is string and modules.re.fullmatch('-?[0-9]{1,19}', value | trim) -%}{{ return(value | trim | int) }}{%- endif -%}
  {{ return(none) }}
{% endmacro %}


{#- A list of team ids: a YAML/JSON list, a single integer, or a comma-separated string. -#}
{% macro recon_check_team_list(name, value) %}
  {%- if value is none -%}{{ return([]) }}{%- endif -%}
  {%- if value is string -%}
    {%- set items = [] if value | trim == '' else value.split(',') -%}
  {%- elif value is integer and value is not sameas true and value is not sameas false -%}
    {%- set items = [value] -%}
  {%- elif value is iterable and value is not mapping -%}
    {%- set items = value -%}
  {%- else -%}
    {{ exceptions.raise_compiler_error("var " ~ name ~ ": " ~ recon_show(value) ~ " is not a list of team ids (integers)") }}
  {%- endif -%}
  {%- set ids = [] -%}
  {%- for item in items -%}
    {%- set number = recon_as_integer(item) -%}
    {%- if number is none -%}
      {{ exceptions.raise_compiler_error("var " ~ name ~ ": team id " ~ recon_show(item) ~ " is not an integer") }}
    {%- endif -%}
    {%- if number < 0 -%}
      {{ exceptions.raise_compiler_error("var " ~ name ~ ": team id " ~ number ~ " is negative") }}
    {%- endif -%}
    {%- if number not in ids -%}{%- do ids.append(number) -%}{%- endif -%}
  {%- endfor -%}
  {{ return(ids | sort) }}
{% endmacro %}


{#- on-run-start: validate before any model SQL runs (only for commands that build models). -#}
{% macro recon_validate_vars() %}
  {%- if execute and flags.WHICH in ('run', 'build', 'compile', 'show') -%}
    {%- set v = recon_vars() -%}
    {{ log("recon: mode=" ~ v['mode'] ~ " semantics=" ~ v['semantics'] ~ " bug window [" ~ v['bug_window_start'] ~ ", " ~ v['bug_window_end'] ~ ") now=" ~ v['now'], info=true) }}
  {%- endif -%}
  select 1
{% endmacro %}


{#- A value as it appears in an error message: JSON for plain values, text for anything else. -#}
{% macro recon_show(value) %}
  {%- if value is none or value is string or value is number or value is sameas true or value is sameas false -%}
    {{- return(value | tojson) -}}
  {%- endif -%}
  {{- return(value | string | tojson) -}}
{% endmacro %}
