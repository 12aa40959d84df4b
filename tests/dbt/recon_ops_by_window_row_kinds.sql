{#-
  int_person_property_ops__by_window holds three kinds of rows (see its yml): operation rows (an event
  person or a distinct_id, at least one aggregated operation), counter rows and ledger rows (nil event
  person, empty distinct_id and key). An operation row never carries counters or a ledger mark, and
  always carries at least one operation and the newest ingestion time of its operations (ingested_max,
  which the diff's dirty set reads); ledger rows sit at the build's now.
-#}
select *
from {{ ref('int_person_property_ops__by_window') }}
where ((event_person_id != toUUID('00000000-0000-0000-0000-000000000000') or distinct_id != '')
       and (events > 0 or operations > 0 or built_until is not null or ingested_max is null
            or not {{ recon_op_states_present('int_person_property_ops__by_window') }}))
   or (built_until is not null
       and (window_start != built_until or slice_start != built_until or ingested_slice != built_until))
