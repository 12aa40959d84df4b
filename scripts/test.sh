#!/usr/bin/env bash
# Run the whole test suite: unit tests, integration tests on the real stack (throwaway Postgres,
# Tansu broker, embedded ClickHouse), the chdb adapter's tests, and lint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check runner tests bench adapters
.venv/bin/mypy runner
.venv/bin/sqlfluff lint models analyses
.venv/bin/python -m pytest -q "$@"
