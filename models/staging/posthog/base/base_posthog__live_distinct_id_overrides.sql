{#-
  Live distinct_id overrides (spec R2.4): for every (team, distinct_id) the row with the highest
  version decides; the distinct_id is overridden only when that row is not deleted. The whole team's
  overrides are read (no filter by the events in scope). Ties on version (not expected: versions are
  monotonic per distinct_id) are broken by (_timestamp, _offset, _partition, is_deleted, person_id), so
  the result never depends on the order ClickHouse reads rows in.
-#}
with latest as (
    select
        team_id,
        distinct_id,
        max(tuple(version, _timestamp, _offset, _partition, is_deleted, person_id)) as latest_row
    from {{ source('posthog', 'person_distinct_id_overrides') }}
    where {{ recon_team_filter('team_id') }}
    group by team_id, distinct_id
)

select
    team_id,
    distinct_id,
    tupleElement(latest_row, 6) as person_id,
    tupleElement(latest_row, 1) as override_version
from latest
where tupleElement(latest_row, 5) = 0
