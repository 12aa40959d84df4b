#!/usr/bin/env bash
# Install everything recon needs into .venv (idempotent): Python packages pinned by
# constraints.txt, the chdb dbt adapter, and the PostgreSQL server binaries if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON="$candidate"; break
    fi
  done
fi
if [[ -z "$PYTHON" ]]; then
  echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

bash scripts/install-system-deps.sh

if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.recon-installed
want="$(cat pyproject.toml adapters/dbt-chdb/pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet -c constraints.txt -e adapters/dbt-chdb -e '.[dev,dagster]' 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -c 'import dbt.adapters.chdb, runner, confluent_kafka, psycopg, chdb' 
  echo "$want" > "$stamp"
fi
echo "recon installed in .venv ($(.venv/bin/python --version))"
