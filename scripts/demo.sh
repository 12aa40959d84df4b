#!/usr/bin/env bash
# The main job end to end on the embedded default, from a fresh machine:
# install, start the local stack (Postgres + Tansu), seed PostHog-shaped demo data, compute the
# diff with dbt, inspect it, dry-run, apply, ingest the person topic back into ClickHouse, verify.
set -euo pipefail
cd "$(dirname "$0")/.."

TEAMS="${DEMO_TEAMS:-5}"
PERSONS="${DEMO_PERSONS:-20000}"
EVENTS="${DEMO_EVENTS:-300000}"
SEED="${DEMO_SEED:-42}"
W0="${DEMO_BUG_WINDOW_START:-2026-01-06 20:01:00}"
W1="${DEMO_BUG_WINDOW_END:-2026-01-07 14:52:00}"
JOB_ID="${DEMO_JOB_ID:-demo-$(date -u +%Y%m%dT%H%M%SZ)}"
SEMANTICS="${DEMO_SEMANTICS:-original}"  # or replay (README: Replay semantics)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "install"
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

step "local stack: throwaway Postgres + Tansu (Kafka protocol)"
runner stack up

step "seed demo data (teams=$TEAMS persons=$PERSONS events=$EVENTS seed=$SEED)"
runner demo seed --teams "$TEAMS" --persons "$PERSONS" --events "$EVENTS" --seed "$SEED" \
  --bug-window-start "$W0" --bug-window-end "$W1"

VARS="{bug_window_start: \"$W0\", bug_window_end: \"$W1\", semantics: $SEMANTICS}"

step "compute the diff in ClickHouse (dbt run)"
# --full-refresh: the seed above replaced the sources (history included), so the models' incremental
# state from an earlier demo no longer describes them; production sources only ever grow.
dbt run --project-dir . --profiles-dir profiles --vars "$VARS" --full-refresh

step "inspect: the diff per team, and the most changed keys (analyses/)"
dbt show --project-dir . --profiles-dir profiles --vars "$VARS" -q --select diff_summary_by_team --limit 20
dbt show --project-dir . --profiles-dir profiles --vars "$VARS" -q --select most_changed_keys --limit 10

step "dry run: what would change (writes nothing)"
runner apply --dry-run --job-id "$JOB_ID" --sample 3

step "apply"
runner apply --job-id "$JOB_ID"

step "ingest the person topic into ClickHouse (what production's Kafka engine does)"
runner warehouse sync-persons

step "verify: recompute the diff for this job's persons"
runner verify --job-id "$JOB_ID" --vars "$VARS"

step "done: job $JOB_ID (stop the stack with: .venv/bin/runner stack down)"
