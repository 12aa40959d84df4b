"""Local-only tooling: the throwaway stack, the demo seed, local person ingestion and the DDL of the
tables production already has (PostHog's ClickHouse sources, `posthog_person`).

No production path imports this package: `apply`, `restore`, `verify`, `schedule`, `report`,
`models` and `db migrate` run without it (tests/unit/test_layout.py checks). Code here may import the
production modules, never the other way round.
"""
