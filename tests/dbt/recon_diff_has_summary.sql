{#- Every team of the diff table has its summary row, with the same number of persons and batches. -#}
with diff as (
    select team_id, count() as persons, max(batch_index) + 1 as batches, any(invocation_id) as invocation_id
    from {{ ref('person_property_diff') }}
    group by team_id
)

select diff.*, summary.persons_with_diff, summary.batches as summary_batches
from diff
left join {{ ref('person_property_diff_summary') }} as summary
    on diff.team_id = summary.team_id
where summary.team_id = 0 and diff.team_id != 0
   or summary.persons_with_diff != diff.persons
   or summary.batches != diff.batches
   or summary.invocation_id != diff.invocation_id
