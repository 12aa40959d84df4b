"""A schedule's progress in Postgres (`recon_schedule`, `recon_schedule_chunk`), keyed by the schedule id,
on one autocommit connection that also holds the schedule's advisory lock (one process at a time runs a
schedule). A chunk is recorded when it finishes; `runner.jobs.schedule` decides what to run from it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import psycopg

from runner.config.schedule import ScheduleConfig
from runner.config.settings import ConfigError
from runner.rules.scheduling import Chunk

log = logging.getLogger("runner.schedule")


@dataclass(frozen=True)
class ChunkRecord:
    """A finished chunk, as its row records it."""

    job_id: str
    chunk: Chunk
    status: str
    error: str | None
    teams_succeeded: int
    teams_failed: int
    persons_processed: int
    persons_updated: int
    persons_skipped: int
    duration_seconds: float


class Progress:
    """The schedule's rows in Postgres, on one autocommit connection that also holds its lock."""

    def __init__(self, pg_url: str, schedule_id: str):
        self.pg_url = pg_url
        self.schedule_id = schedule_id
        self.locked = False
        self.conn = psycopg.connect(pg_url, autocommit=True)

    def close(self) -> None:
        self.conn.close()

    def lock(self) -> None:
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", ("recon_schedule:" + self.schedule_id,)
        ).fetchone()
        if not row or not row[0]:
            raise ConfigError(f"schedule {self.schedule_id} is being run by another process; wait for it")
        self.locked = True

    def _reconnect(self) -> None:
        """After a lost connection (a chunk can take hours): a new session, and the lock again."""
        log.warning("Schedule %s: Postgres connection lost; reconnecting", self.schedule_id)
        self.conn.close()
        self.conn = psycopg.connect(self.pg_url, autocommit=True)
        if self.locked:
            self.lock()

    def register(self, config: ScheduleConfig, chunks: int) -> None:
        """Create the schedule's row, or check that an existing one computes the same thing."""
        document = {"identity": config.identity(), "cursor": config.to_cursor()}
        row = self.conn.execute(
            "SELECT config FROM recon_schedule WHERE schedule_id = %s", (self.schedule_id,)
        ).fetchone()
        if row is not None and row[0].get("identity") != config.identity():
            raise ConfigError(
                f"schedule {self.schedule_id} was created with another configuration "
                f"({json.dumps(row[0].get('identity'), sort_keys=True)}); use another --schedule-id"
            )
        self.conn.execute(
            """
            INSERT INTO recon_schedule (schedule_id, config, chunks) VALUES (%s, %s, %s)
            ON CONFLICT (schedule_id) DO UPDATE
            SET config = EXCLUDED.config, chunks = EXCLUDED.chunks, updated_at = now()
            """,
            (self.schedule_id, json.dumps(document), chunks),
        )

    def finished(self) -> dict[str, str]:
        """job id -> status of the chunks recorded so far."""
        return dict(
            self.conn.execute(
                "SELECT job_id, status FROM recon_schedule_chunk WHERE schedule_id = %s", (self.schedule_id,)
            ).fetchall()
        )

    def record(self, result: ChunkRecord) -> None:
        try:
            self._record(result)
        except psycopg.OperationalError:
            self._reconnect()
            self._record(result)

    def _record(self, result: ChunkRecord) -> None:
        chunk = result.chunk
        self.conn.execute(
            """
            INSERT INTO recon_schedule_chunk (
                job_id, schedule_id, chunk, team_ids, min_team_id, max_team_id, status, error,
                teams_succeeded, teams_failed, persons_processed, persons_updated, persons_skipped,
                duration_seconds)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (job_id) DO UPDATE SET
                status = EXCLUDED.status, error = EXCLUDED.error,
                teams_succeeded = EXCLUDED.teams_succeeded, teams_failed = EXCLUDED.teams_failed,
                persons_processed = EXCLUDED.persons_processed, persons_updated = EXCLUDED.persons_updated,
                persons_skipped = EXCLUDED.persons_skipped, duration_seconds = EXCLUDED.duration_seconds,
                finished_at = now()
            """,
            (
                result.job_id,
                self.schedule_id,
                chunk.key(),
                list(chunk.team_ids) if chunk.team_ids is not None else None,
                chunk.min_team_id,
                chunk.max_team_id,
                result.status,
                result.error,
                result.teams_succeeded,
                result.teams_failed,
                result.persons_processed,
                result.persons_updated,
                result.persons_skipped,
                result.duration_seconds,
            ),
        )
        self.conn.execute(
            "UPDATE recon_schedule SET updated_at = now() WHERE schedule_id = %s", (self.schedule_id,)
        )


def read_progress(pg_url: str, schedule_id: str) -> dict[str, str]:
    """Recorded chunks of a schedule, for `--plan` and dry runs (no lock, nothing written)."""
    progress = Progress(pg_url, schedule_id)
    try:
        return progress.finished()
    finally:
        progress.close()
