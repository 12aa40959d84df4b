"""Kafka side of apply: the outbox is published with an idempotent producer.

Postgres and Kafka cannot share a transaction, so every update writes an outbox row in its own
transaction; after the commit the rows are produced (key = person uuid), and they count as published
only once the broker confirmed their delivery. A crash or a broker outage leaves rows unpublished, and
the next run publishes them before anything else. Duplicates are harmless: each message carries the
person's new version and ClickHouse keeps the highest (`ReplacingMergeTree(version)`).

Delivery is recorded per outbox batch (the rows one chunk wrote, `recon_outbox_batch`): when every
message of a batch is confirmed, one UPDATE marks the batch published; a batch with any unconfirmed
message stays unpublished as a whole and is produced again by the next run. Rows without a batch
(written before batches existed) are marked one by one, as before. `recon_outbox_status` shows each
row's effective `published_at`. Apply and restore hand over the messages they just wrote, so a batch is
not read back from Postgres unless its messages were not kept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from runner import faults
from runner.persons import OutboxBatch
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


class _Delivery:
    """Delivery callback of one outbox batch (or one legacy row): counts confirmations, keeps errors."""

    __slots__ = ("publisher", "batch_id", "row_id", "team_id", "pending", "failed")

    def __init__(self, publisher: Publisher, team_id: int, batch_id: int | None, row_id: int | None, n: int):
        self.publisher = publisher
        self.team_id = team_id
        self.batch_id = batch_id
        self.row_id = row_id
        self.pending = n
        self.failed = False

    def __call__(self, err: KafkaError | None, _msg: Any) -> None:
        self.pending -= 1
        if err is not None:
            self.failed = True
            self.publisher._failed.setdefault(self.team_id, []).append(str(err))
        if self.pending == 0 and not self.failed:
            if self.batch_id is not None:
                self.publisher._delivered_batches.append(self.batch_id)
            else:
                assert self.row_id is not None
                self.publisher._delivered_rows.append(self.row_id)


class Publisher:
    """Produces outbox batches and remembers which the broker confirmed in full, and which messages
    failed (per team). Delivery is asynchronous: `confirm()` waits for every outstanding message."""

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
        self._delivered_batches: list[int] = []
        self._delivered_rows: list[int] = []
        self._failed: dict[int, list[str]] = {}

    def _produce(self, key: str, payload: str, callback: _Delivery) -> None:
        faults.point("mid_publish")
        try:
            self._producer.produce(self.topic, payload, key, on_delivery=callback)
        except BufferError:
            while True:
                self._producer.poll(0.1)  # queue full: serve deliveries, then retry
                try:
                    self._producer.produce(self.topic, payload, key, on_delivery=callback)
                    return
                except BufferError:
                    continue

    def produce_batch(self, conn: psycopg.Connection, batch: OutboxBatch) -> int:
        """Produce a committed outbox batch (its kept messages, else its rows read back by id range).
        The batch is marked published by `mark_published` once the broker confirmed all of them."""
        messages = batch.messages
        if messages is None:
            rows = conn.execute(
                "SELECT person_uuid::text, payload FROM recon_outbox "
                "WHERE id BETWEEN %s AND %s AND batch_id = %s ORDER BY id",
                (batch.first_id, batch.last_id, batch.batch_id),
            ).fetchall()
            messages = [(key, payload) for key, payload in rows]
        callback = _Delivery(self, batch.team_id, batch.batch_id, None, len(messages) + 1)
        for key, payload in messages:
            self._produce(key, payload, callback)
        callback(None, None)  # the batch's own count: confirmed once every message is
        self._producer.poll(0)
        return len(messages)

    def produce_unpublished(self, conn: psycopg.Connection) -> int:
        """Produce everything unpublished in the outbox (earlier runs, any job): rows without a batch
        one by one, then every unpublished batch. Returns the number of messages produced."""
        produced = 0
        last_id = 0
        while True:
            rows = conn.execute(
                "SELECT id, team_id, person_uuid::text, payload FROM recon_outbox "
                "WHERE published_at IS NULL AND batch_id IS NULL AND id > %s ORDER BY id LIMIT %s",
                (last_id, PAGE_SIZE),
            ).fetchall()
            for outbox_id, team_id, key, payload in rows:
                self._produce(key, payload, _Delivery(self, team_id, None, outbox_id, 1))
            produced += len(rows)
            self._producer.poll(0)
            if len(rows) < PAGE_SIZE:
                break
            last_id = rows[-1][0]
        batches = conn.execute(
            "SELECT id, job_id, team_id, first_id, last_id, messages FROM recon_outbox_batch "
            "WHERE published_at IS NULL ORDER BY id"
        ).fetchall()
        for batch_id, job_id, team_id, first_id, last_id, size in batches:
            produced += self.produce_batch(
                conn, OutboxBatch(batch_id, job_id, team_id, first_id, last_id, size)
            )
        return produced

    def poll(self) -> None:
        """Serve delivery callbacks that are due."""
        self._producer.poll(0)

    def mark_published(self, conn: psycopg.Connection) -> int:
        """Mark the batches (and legacy rows) confirmed so far published (on an autocommit connection).
        Returns how many batches and rows were marked."""
        self._producer.poll(0)
        batches, self._delivered_batches = self._delivered_batches, []
        rows, self._delivered_rows = self._delivered_rows, []
        if batches:
            conn.execute("UPDATE recon_outbox_batch SET published_at = now() WHERE id = ANY(%s)", (batches,))
        if rows:
            mark_published(conn, rows)
        return len(batches) + len(rows)

    def confirm(self, conn: psycopg.Connection) -> dict[int, str]:
        """Wait for every outstanding delivery (up to the timeout), mark the confirmed batches published,
        and return, per team, why some of its messages were not confirmed (empty: all delivered). The
        unconfirmed batches stay unpublished for the next run."""
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
    """Mark outbox rows without a batch published."""
    conn.execute("UPDATE recon_outbox SET published_at = now() WHERE id = ANY(%s)", (list(ids),))


def pending_count(conn: psycopg.Connection) -> int:
    """Outbox rows not yet published (rows of unpublished batches included)."""
    row = conn.execute("SELECT count(*) FROM recon_outbox_status WHERE published_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def drain(conn: psycopg.Connection, publisher: Publisher) -> int:
    """Publish every unpublished outbox row left by earlier runs (any job). Raises PublishError when
    the broker does not confirm them all."""
    produced = publisher.produce_unpublished(conn)
    if not produced:
        publisher.mark_published(conn)  # empty batches, if any
        return 0
    log.info("Publishing %d unpublished outbox messages left by earlier runs", produced)
    publisher.finish(conn)
    log.info("Published %d outbox messages left by earlier runs", produced)
    return produced
