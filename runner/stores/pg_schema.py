"""Postgres schema: recon's own tables (PostHog's `posthog_person` DDL is in `runner.local.sources`).

`migrate` (`runner db migrate`) creates and upgrades recon's tables idempotently: PostHog's backup table
(`posthog_person_reconciliation_backup`, spec §2.6), the run ledger and the outbox (with its quarantine).
It never alters `posthog_person`; `runner db init-local` creates that table for local use only.
"""

from __future__ import annotations

import psycopg

from runner.config import settings
from runner.config.settings import ConfigError

# The migration apply, restore and outbox need (7: the outbox quarantine, runner.stores.outbox).
REQUIRED_MIGRATION = 7

# Ordered migrations of recon's own tables. Append only; never edit an applied one.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "backup table (PostHog schema)",
        """
CREATE TABLE IF NOT EXISTS posthog_person_reconciliation_backup (
    job_id text NOT NULL,
    team_id integer NOT NULL,
    person_id bigint NOT NULL,
    uuid uuid NOT NULL,
    properties jsonb NOT NULL,
    properties_last_updated_at jsonb,
    properties_last_operation jsonb,
    version bigint,
    is_identified boolean NOT NULL,
    created_at timestamptz NOT NULL,
    is_user_id integer,
    pending_operations jsonb NOT NULL,
    properties_after jsonb,
    properties_last_updated_at_after jsonb,
    properties_last_operation_after jsonb,
    version_after bigint,
    backed_up_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, team_id, person_id)
);
CREATE INDEX IF NOT EXISTS posthog_person_reconciliation_backup_team_person
    ON posthog_person_reconciliation_backup (team_id, person_id);
""",
    ),
    (
        2,
        "run ledger",
        """
CREATE TABLE IF NOT EXISTS recon_run (
    job_id text PRIMARY KEY,
    kind text NOT NULL,
    config jsonb NOT NULL DEFAULT '{}'::jsonb,
    dry_run boolean NOT NULL DEFAULT false,
    status text NOT NULL DEFAULT 'running',
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE IF NOT EXISTS recon_run_team (
    job_id text NOT NULL REFERENCES recon_run (job_id),
    team_id bigint NOT NULL,
    status text NOT NULL,
    error text,
    processed bigint NOT NULL DEFAULT 0,
    updated bigint NOT NULL DEFAULT 0,
    skipped bigint NOT NULL DEFAULT 0,
    outcomes jsonb NOT NULL DEFAULT '{}'::jsonb,
    commits integer NOT NULL DEFAULT 0,
    chunk_id text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    duration_seconds double precision,
    PRIMARY KEY (job_id, team_id)
);
CREATE INDEX IF NOT EXISTS recon_run_team_finished ON recon_run_team (finished_at);
""",
    ),
    (
        3,
        "outbox of person messages",
        """
CREATE TABLE IF NOT EXISTS recon_outbox (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    team_id bigint NOT NULL,
    person_uuid uuid NOT NULL,
    version bigint NOT NULL,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS recon_outbox_unpublished ON recon_outbox (id) WHERE published_at IS NULL;
""",
    ),
    (
        4,
        "outbox lookup by job and person (re-runs skip persons their job already applied)",
        """
CREATE INDEX IF NOT EXISTS recon_outbox_job_person ON recon_outbox (job_id, team_id, person_uuid);
""",
    ),
    (
        5,
        "schedule progress (runner schedule): one row per schedule, one per finished chunk",
        """
CREATE TABLE IF NOT EXISTS recon_schedule (
    schedule_id text PRIMARY KEY,
    config jsonb NOT NULL,
    chunks integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS recon_schedule_chunk (
    job_id text PRIMARY KEY,
    schedule_id text NOT NULL REFERENCES recon_schedule (schedule_id),
    chunk text NOT NULL,
    team_ids bigint[],
    min_team_id bigint,
    max_team_id bigint,
    status text NOT NULL,
    error text,
    teams_succeeded integer NOT NULL DEFAULT 0,
    teams_failed integer NOT NULL DEFAULT 0,
    persons_processed bigint NOT NULL DEFAULT 0,
    persons_updated bigint NOT NULL DEFAULT 0,
    persons_skipped bigint NOT NULL DEFAULT 0,
    duration_seconds double precision,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS recon_schedule_chunk_schedule ON recon_schedule_chunk (schedule_id);
""",
    ),
    (
        6,
        "outbox published per batch: one row per written chunk records its delivery",
        """
CREATE TABLE IF NOT EXISTS recon_outbox_batch (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    team_id bigint NOT NULL,
    first_id bigint NOT NULL,
    last_id bigint NOT NULL,
    messages integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX IF NOT EXISTS recon_outbox_batch_unpublished
    ON recon_outbox_batch (id) WHERE published_at IS NULL;
ALTER TABLE recon_outbox ADD COLUMN IF NOT EXISTS batch_id bigint;
DROP INDEX IF EXISTS recon_outbox_unpublished;
CREATE INDEX IF NOT EXISTS recon_outbox_unpublished_rows
    ON recon_outbox (id) WHERE published_at IS NULL AND batch_id IS NULL;
CREATE OR REPLACE VIEW recon_outbox_status AS
SELECT o.id, o.job_id, o.team_id, o.person_uuid, o.version, o.payload, o.batch_id, o.created_at,
       COALESCE(o.published_at, b.published_at) AS published_at
FROM recon_outbox o
LEFT JOIN recon_outbox_batch b ON b.id = o.batch_id;
""",
    ),
    (
        7,
        "outbox quarantine: messages Kafka rejects for good are set aside with their error (runner outbox)",
        """
ALTER TABLE recon_outbox ADD COLUMN IF NOT EXISTS quarantined_at timestamptz;
ALTER TABLE recon_outbox ADD COLUMN IF NOT EXISTS error text;
ALTER TABLE recon_outbox ADD COLUMN IF NOT EXISTS discarded_at timestamptz;
ALTER TABLE recon_outbox ADD COLUMN IF NOT EXISTS discard_reason text;
CREATE INDEX IF NOT EXISTS recon_outbox_set_aside
    ON recon_outbox (job_id, id) WHERE quarantined_at IS NOT NULL OR discarded_at IS NOT NULL;
-- A quarantined or discarded row is not published even when its batch is (the batch's other messages
-- were delivered): published_at stays NULL for it, and `status` says which of the four states it is in.
CREATE OR REPLACE VIEW recon_outbox_status AS
SELECT o.id, o.job_id, o.team_id, o.person_uuid, o.version, o.payload, o.batch_id, o.created_at,
       CASE WHEN o.quarantined_at IS NULL AND o.discarded_at IS NULL
            THEN COALESCE(o.published_at, b.published_at) END AS published_at,
       CASE WHEN o.discarded_at IS NOT NULL THEN 'discarded'
            WHEN o.quarantined_at IS NOT NULL THEN 'quarantined'
            WHEN COALESCE(o.published_at, b.published_at) IS NOT NULL THEN 'published'
            ELSE 'pending' END AS status,
       o.quarantined_at, o.error, o.discarded_at, o.discard_reason
FROM recon_outbox o
LEFT JOIN recon_outbox_batch b ON b.id = o.batch_id;
""",
    ),
]

_LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS recon_schema_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def connect(url: str | None = None, **kwargs) -> psycopg.Connection:
    """A connection; an unreachable server is a configuration error (exit 2, nothing written)."""
    try:
        return psycopg.connect(url or settings.persons_db_url() or "", **kwargs)
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to Postgres ({settings.ENV_PERSONS_DB}): {exc}".strip()) from exc


def migrate(url: str | None = None) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call (empty when up to date)."""
    applied: list[int] = []
    with connect(url) as conn:
        # One migrator at a time; a concurrent `migrate` waits here, then finds nothing to do.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('recon_schema_migrations'))")
        conn.execute(_LEDGER_DDL)
        done = {row[0] for row in conn.execute("SELECT version FROM recon_schema_migrations")}
        for version, description, ddl in MIGRATIONS:
            if version in done:
                continue
            conn.execute(ddl)
            conn.execute(
                "INSERT INTO recon_schema_migrations (version, description) VALUES (%s, %s)",
                (version, description),
            )
            applied.append(version)
    return applied


def check_postgres(url: str) -> None:
    """Reachable, and recon's tables migrated; else exit 2 before anything is written."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT coalesce(max(version), 0) FROM recon_schema_migrations").fetchone()
            have = int(row[0]) if row else 0
            person_table = conn.execute("SELECT to_regclass('posthog_person')").fetchone()
    except psycopg.errors.UndefinedTable as exc:
        raise ConfigError("recon's tables are missing in Postgres: run `runner db migrate`") from exc
    except psycopg.OperationalError as exc:
        raise ConfigError(f"cannot connect to Postgres ({settings.ENV_PERSONS_DB}): {exc}".strip()) from exc
    if have < REQUIRED_MIGRATION:
        raise ConfigError(f"recon's Postgres schema is at migration {have}: run `runner db migrate`")
    if not person_table or person_table[0] is None:
        raise ConfigError("table posthog_person does not exist in the persons database")
