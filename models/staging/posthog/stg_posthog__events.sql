{#-
  Every event in scope (W0 <= timestamp < now, teams selected by the team vars), reduced to the
  columns needed to count them per team and window and to find the (distinct_id, person) groups
  touched by newly ingested events. Reads no properties, so it costs next to nothing next to the
  extraction in stg_posthog__property_operations.
-#}
select
    team_id,
    timestamp,
    distinct_id,
    person_id as event_person_id,
    {{ recon_event_ingested_at() }} as ingested_at
from {{ source('posthog', 'events') }}
where timestamp >= {{ recon_ts('bug_window_start') }}
    and timestamp < {{ recon_ts('now') }}
    and {{ recon_team_filter('team_id') }}
