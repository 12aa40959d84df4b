"""Kafka side of apply: the outbox is published with an idempotent producer.

Postgres and Kafka cannot share a transaction, so every update writes an outbox row in its own
transaction; after the commit the rows are produced (key = person uuid), and a row is marked published
only when the broker confirmed its delivery. A crash or a broker outage leaves rows unpublished, and the
next run publishes them before anything else. Duplicates are harmless: each message carries the
person's new version and ClickHouse keeps the highest (`ReplacingMergeTree(version)`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from runner import faults
from runner.settings import ConfigError

log = logging.getLogger(__name__)

PAGE_SIZE = 5000


class PublishError(RuntimeError):
    """Messages could not be confirmed; their outbox rows stay unpublished for the next run."""


def check_broker(bootstrap: str, topic: str, timeout: float = 10.0) -> None:
    """Fail fast (exit 2, nothing written) when the broker is unreachable or the topic is missing."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        metadata = admin.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise ConfigError(f"Kafka at {bootstrap} is unreachable: {exc}") from exc
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError(f"Kafka topic {topic!r} does not exist on {bootstrap}")


class Publisher:
    """Produces outbox rows and remembers which deliveries the broker confirmed, and which failed (per
    team). Delivery is asynchronous: `finish()` waits for every outstanding message."""

    def __init__(self, bootstrap: str, topic: str, timeout: float = 30.0):
        self.topic = topic
        self.timeout = timeout
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "batch.size": 1_000_000,
                "message.timeout.ms": int(timeout * 1000),
                # Bound the client's buffer so memory stays flat however many persons a team has.
                "queue.buffering.max.kbytes": 64 * 1024,
                "queue.buffering.max.messages": 100_000,
                "log_level": 3,
            }
        )
        self._delivered: list[int] = []
        self._failed: dict[int, list[str]] = {}

    def _on_delivery(self, outbox_id: int, team_id: int, err: KafkaError | None, _msg: Any) -> None:
        if err is None:
            self._delivered.append(outbox_id)
        else:
            self._failed.setdefault(team_id, []).append(str(err))

    def produce(self, outbox_id: int, key: str, payload: str, team_id: int = 0) -> None:
        faults.point("mid_publish")
        callback = functools.partial(self._on_delivery, outbox_id, team_id)
        while True:
            try:
                self._producer.produce(self.topic, key=key, value=payload, on_delivery=callback)
                return
            except BufferError:
                self._producer.poll(0.1)  # queue full: serve deliveries, then retry

    def produce_pending(
        self,
        conn: psycopg.Connection,
        *,
        job_id: str | None = None,
        team_id: int | None = None,
        after_id: int = 0,
    ) -> tuple[int, int]:
        """Produce every unpublished outbox row (of one job and team, or all) with id > after_id, in id
        order. Returns (messages produced, last id produced)."""
        produced = 0
        last_id = after_id
        while True:
            rows = conn.execute(
                "SELECT id, team_id, person_uuid, payload FROM recon_outbox "
                "WHERE published_at IS NULL AND id > %(after)s "
                "AND (%(job)s::text IS NULL OR job_id = %(job)s) "
                "AND (%(team)s::bigint IS NULL OR team_id = %(team)s) "
                "ORDER BY id LIMIT %(n)s",
                {"after": last_id, "job": job_id, "team": team_id, "n": PAGE_SIZE},
            ).fetchall()
            for outbox_id, row_team, person_uuid, payload in rows:
                self.produce(outbox_id, str(person_uuid), payload, row_team)
            produced += len(rows)
            if rows:
                last_id = rows[-1][0]
            self._producer.poll(0)
            if len(rows) < PAGE_SIZE:
                return produced, last_id

    def poll(self) -> None:
        """Serve delivery callbacks that are due."""
        self._producer.poll(0)

    def mark_published(self, conn: psycopg.Connection) -> int:
        """Mark the deliveries confirmed so far published (on an autocommit connection)."""
        self._producer.poll(0)
        ids, self._delivered = self._delivered, []
        if ids:
            mark_published(conn, ids)
        return len(ids)

    def confirm(self, conn: psycopg.Connection) -> dict[int, str]:
        """Wait for every outstanding delivery (up to the timeout), mark the confirmed ones published,
        and return, per team, why some of its messages were not confirmed (empty: all delivered). The
        unconfirmed rows stay in the outbox for the next run."""
        if self._producer.flush(self.timeout + 5):
            self._producer.purge()  # their callbacks report them as failed
            self._producer.flush(5)
        self.mark_published(conn)
        failed, self._failed = self._failed, {}
        return {
            team: f"Kafka did not confirm {len(errors)} messages ({errors[-1]}); "
            "they stay in the outbox and the next run publishes them"
            for team, errors in failed.items()
        }

    def finish(self, conn: psycopg.Connection) -> None:
        """`confirm`, raising PublishError when any message was not confirmed."""
        failures = self.confirm(conn)
        if failures:
            raise PublishError("; ".join(f"team {team}: {error}" for team, error in sorted(failures.items())))

    def close(self) -> None:
        """Stop the client's threads (outstanding messages were flushed by `finish`)."""
        self._producer.flush(0)
        self._producer.close()


def mark_published(conn: psycopg.Connection, ids: Sequence[int]) -> None:
    conn.execute("UPDATE recon_outbox SET published_at = now() WHERE id = ANY(%s)", (list(ids),))


def pending_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM recon_outbox WHERE published_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def drain(conn: psycopg.Connection, publisher: Publisher) -> int:
    """Publish every unpublished outbox row left by earlier runs (any job). Raises PublishError when
    the broker does not confirm them all."""
    produced, _ = publisher.produce_pending(conn)
    if not produced:
        return 0
    log.info("Publishing %d unpublished outbox messages left by earlier runs", produced)
    publisher.finish(conn)
    log.info("Published %d outbox messages left by earlier runs", produced)
    return produced
