{#-
  Current ClickHouse state of every live person (spec R2.2): per (team, id) the row with the highest
  version gives properties and the baseline version; persons whose highest row is a tombstone are
  dropped (they are never reconciled, gotcha 11). No FINAL, no filter on _timestamp.
  Ties on the highest version are broken by (_timestamp, _offset, is_deleted, properties): the
  original leaves them unspecified; this makes the choice deterministic.
  The top-level keys and raw values are extracted here once (R6.3): a properties text that is not a
  JSON object gives no keys; with duplicate keys the first one counts (indexOf finds the first).
  Integers beyond 64 bits stay numbers, as in the operations (macros/recon_numbers.sql).
-#}
with latest as (
    select
        team_id,
        id as person_id,
        max(tuple(version, _timestamp, _offset, is_deleted, properties)) as latest_row
    from {{ source('posthog', 'person') }}
    where {{ recon_team_filter('team_id') }}
    group by team_id, id
)

select
    team_id,
    person_id,
    tupleElement(latest_row, 1) as baseline_version,
    tupleElement(latest_row, 5) as properties,
    arrayMap(member -> member.1, JSONExtractKeysAndValuesRaw(properties)) as state_keys,
    if(
        match(properties, '[0-9]{19}'),
        arrayMap(
            member -> {{ recon_unquote_big_integers('member.2', 'properties') }},
            JSONExtractKeysAndValuesRaw(properties)
        ),
        arrayMap(member -> member.2, JSONExtractKeysAndValuesRaw(properties))
    ) as state_values
from latest
where tupleElement(latest_row, 4) = 0
