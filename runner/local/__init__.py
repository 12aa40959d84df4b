"""Local-only tooling: the throwaway stack, the demo seed, local person ingestion and the DDL of the
tables production already has (PostHog's ClickHouse sources, `posthog_person`).

- `stack/`: `runner stack`, a throwaway Postgres cluster and Tansu broker (`stack.json` in the state dir);
- `seed/`: `runner demo seed`, deterministic PostHog-shaped demo data with a bug window of lost updates;
- `sources.py`: the DDL of PostHog's source tables and of `posthog_person` (`db init-local` loads it by name);
- `warehouse_cli.py`, `person_sync.py`: `runner warehouse`, PostHog's source tables and ingesting the
  person topic into ClickHouse;
- `guard.py`: refusing a ClickHouse or Postgres that is not local before writing demo data.

No production path imports this package: `apply`, `restore`, `verify`, `schedule`, `report`,
`models` and `db migrate` run without it (tests/unit/test_layout.py checks). Code here may import the
production modules, never the other way round.
"""
