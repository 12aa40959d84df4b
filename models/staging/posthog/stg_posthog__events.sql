{#-
  Every event in scope (W0 <= timestamp < now, teams selected by the team vars), reduced to the two
  columns needed to count them per team and window. Reads no properties, so counting all events
  costs next to nothing next to the extraction in stg_posthog__property_operations.
-#}
select
    team_id,
    timestamp
from {{ source('posthog', 'events') }}
where timestamp >= {{ recon_ts('bug_window_start') }}
    and timestamp < {{ recon_ts('now') }}
    and {{ recon_team_filter('team_id') }}
