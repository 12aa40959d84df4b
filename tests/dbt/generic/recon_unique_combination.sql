{#-
  The combination of `columns` identifies a row (dbt has `unique` for one column only).
  use_final: read through FINAL, for AggregatingMergeTree tables whose duplicates of a key are merged
  by ClickHouse in the background (the logical grain is unique, the physical rows need not be yet).
-#}
{% test recon_unique_combination(model, columns, use_final=false) %}
select {{ columns | join(', ') }}, count() as occurrences
from {{ model }}{% if use_final %} final{% endif %}
group by {{ columns | join(', ') }}
having occurrences > 1
{% endtest %}
