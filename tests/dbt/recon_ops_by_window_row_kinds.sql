{#-
  int_person_property_ops__by_window holds three kinds of rows (see its yml): operation rows (a real
  person and key, at least one aggregated operation), counter rows and ledger rows (nil person, empty
  key). A row of a real person never carries counters or a ledger mark, and an operation row always
  carries at least one operation.
-#}
select *
from {{ ref('int_person_property_ops__by_window') }}
where (person_id != toUUID('00000000-0000-0000-0000-000000000000')
       and (events > 0 or operations > 0 or built_until is not null
            or (last_set is null and first_set_once is null and last_unset_at is null)))
   or (built_until is not null and (window_start != built_until or slice_start != built_until))
