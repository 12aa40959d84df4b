{#-
  Integers beyond 64 bits stay numbers. ClickHouse's JSON functions (JSONExtractRaw and friends) give
  an integer outside [-2^63, 2^64) as a quoted string ("123456789012345678901234567890"): applied as
  is, a number would become a string in Postgres. Such an integer has at least 19 digits, so a value
  holding a quoted run of 19+ digits is looked at against `source`, the raw text it was extracted from:
    * when the source holds no quoted run of 19+ digits at all, every such run in the value was a
      number: all are unquoted (the digits are the source's own text, so the number is exact);
    * else (the source also has a real string of 19+ digits, rare) a value that is exactly one such
      string is unquoted only if the source holds those digits unquoted; a value nesting one (an
      array or object) keeps ClickHouse's text.
  Other numbers keep ClickHouse's text: it re-serialises them as doubles (`1.50` gives `1.5`,
  `0.30000000000000000001` gives `0.3`), which is also what PostHog's ingestion (JSON.parse) stores.
-#}
{% macro recon_has_long_digits(text) -%}
match({{ text }}, '"-?[0-9]{19,}"')
{%- endmacro %}

{% macro recon_unquote_big_integers(value, source) -%}
multiIf(
    not {{ recon_has_long_digits(value) }}, {{ value }},
    not {{ recon_has_long_digits(source) }}, replaceRegexpAll({{ value }}, '"(-?[0-9]{19,})"', '\\1'),
    match({{ value }}, '^"-?[0-9]{19,}"$')
    and match(
        {{ source }},
        concat('[\\[:,]\\s*', substring({{ value }}, 2, length({{ value }}) - 2), '\\s*[,}\\]]')
    ),
    substring({{ value }}, 2, length({{ value }}) - 2),
    {{ value }}
)
{%- endmacro %}

{#- An object's members as JSONExtractKeysAndValuesRaw gives them, big integers unquoted when `enabled`. -#}
{% macro recon_members(object_json, source, enabled) -%}
if(
    {{ enabled }},
    arrayMap(
        member -> tuple(member.1, {{ recon_unquote_big_integers('member.2', source) }}),
        JSONExtractKeysAndValuesRaw({{ object_json }})
    ),
    JSONExtractKeysAndValuesRaw({{ object_json }})
)
{%- endmacro %}
