"""Writing the demo data to Postgres: `posthog_person` (created if needed, emptied on reset) in one COPY;
and a fingerprint of the table for determinism checks.
"""

from __future__ import annotations

from runner.local.seed.generator import PG_PERSON_COLUMNS, Dataset


def write_postgres(dataset: Dataset, url: str, reset: bool = True) -> None:
    """Write the dataset's `posthog_person` rows; without `reset`, after the ids already there."""
    from runner.local import sources
    from runner.stores import pg_schema

    sources.init_posthog_person(url)
    with pg_schema.connect(url) as conn:
        if reset:
            conn.execute("TRUNCATE posthog_person RESTART IDENTITY")
        (base,) = conn.execute("SELECT coalesce(max(id), 0) FROM posthog_person").fetchone() or (0,)
        rows = dataset.pg_rows if not base else [(base + row[0], *row[1:]) for row in dataset.pg_rows]
        with conn.cursor() as cur:
            with cur.copy(f"COPY posthog_person ({', '.join(PG_PERSON_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                "SELECT setval(pg_get_serial_sequence('posthog_person', 'id'), "
                "(SELECT coalesce(max(id), 0) + 1 FROM posthog_person), false)"
            )


def postgres_fingerprint(url: str) -> tuple[int, str]:
    """(row count, md5 over the ordered rows) of posthog_person."""
    from runner.stores import pg_schema

    with pg_schema.connect(url) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        row = conn.execute(
            "SELECT count(*), coalesce(md5(string_agg(p::text, '|' ORDER BY p.id)), '') FROM ("
            f"SELECT {', '.join(PG_PERSON_COLUMNS)} FROM posthog_person) p"
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])
