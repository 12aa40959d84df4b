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

A message rejected for good (`PERMANENT_ERRORS`: the message itself can never be delivered as it is,
e.g. larger than `message.max.bytes`, which librdkafka already refuses at `produce()`) is quarantined
instead (`runner.stores.outbox`): set aside in the outbox with its error, so it never blocks its batch (whose
other messages are marked published) nor any later run; `runner outbox` lists, retries and discards it.
Every other error is transient: the message stays pending and the next run publishes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from runner.config import faults
from runner.config.settings import ConfigError
from runner.stores import outbox
from runner.stores.persons import OutboxBatch

log = logging.getLogger("runner.publisher")  # its name before the move: same log lines

PAGE_SIZE = 5000

# Errors about the message itself: sent again unchanged it fails the same way, so it is quarantined
# rather than retried by every run. Errors about the broker, the topic or the client (outages, timeouts,
# TOPIC_AUTHORIZATION_FAILED, an unknown topic, a fatal producer error) are not here: they would reject
# every message alike, so the messages stay pending and the run fails before starting new work.
PERMANENT_ERRORS = {
    # Over the client's message.max.bytes (raised at produce()) or the broker's / topic's limit.
    KafkaError.MSG_SIZE_TOO_LARGE,
    # The record batch holding it exceeds the broker's limit (a message alone near the limit).
    KafkaError.RECORD_LIST_TOO_LARGE,
    # The broker's validation refused the record (e.g. a key the topic's configuration requires).
    KafkaError.INVALID_RECORD,
    # CORRUPT_MESSAGE, reported once the client's own retries are spent.
    KafkaError.INVALID_MSG,
}


def is_permanent(err: KafkaError) -> bool:
    """Whether Kafka rejected the message for good (quarantine it) rather than for now (keep it pending)."""
    return err.code() in PERMANENT_ERRORS and not err.fatal()


def describe(err: KafkaError, size: int | None) -> str:
    """The error recorded with a quarantined message."""
    text = f"{err.name()}: {err.str()}"
    return f"{text} (message of {size} bytes)" if size is not None else text


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
    """Delivery callback of one outbox batch (or one row): counts settled messages, keeps errors. A
    message rejected for good is quarantined and counts as settled, so the rest of its batch can still
    be marked published."""

    __slots__ = ("publisher", "batch_id", "row_id", "team_id", "job_id", "pending", "failed")

    def __init__(
        self,
        publisher: Publisher,
        team_id: int,
        batch_id: int | None,
        row_id: int | None,
        n: int,
        job_id: str | None = None,
    ):
        self.publisher = publisher
        self.team_id = team_id
        self.job_id = job_id
        self.batch_id = batch_id
        self.row_id = row_id
        self.pending = n
        self.failed = False

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is None or msg is None:
            self.settle(err, None, None)
            return
        key = msg.key()
        self.settle(err, key.decode() if isinstance(key, bytes) else key, len(msg))

    def settle(self, err: KafkaError | None, key: str | None, size: int | None) -> None:
        """One message settled: delivered (err None), rejected for good, or failed for now."""
        self.pending -= 1
        if err is not None:
            if is_permanent(err) and (self.row_id is not None or (self.batch_id is not None and key)):
                rejected = (
                    outbox.Quarantine(describe(err, size), row_id=self.row_id)
                    if self.row_id is not None
                    else outbox.Quarantine(
                        describe(err, size),
                        batch_id=self.batch_id,
                        person_uuid=key,
                        job_id=self.job_id,
                        team_id=self.team_id,
                    )
                )
                self.publisher._rejected.append(rejected)
                self.publisher.quarantined_total += 1
                if self.row_id is not None:
                    return  # a single row: quarantined, not published
            else:
                self.failed = True
                self.publisher._failed.setdefault(self.team_id, []).append(str(err))
        if self.pending == 0 and not self.failed:
            if self.batch_id is not None:
                self.publisher._delivered_batches.append(self.batch_id)
            elif self.row_id is not None:
                self.publisher._delivered_rows.append(self.row_id)


class Publisher:
    """Produces outbox batches and remembers which the broker confirmed in full, and which messages
    failed (per team). Delivery is asynchronous: `confirm()` waits for every outstanding message."""

    def __init__(
        self, bootstrap: str, topic: str, timeout: float = 30.0, message_max_bytes: int | None = None
    ):
        self.topic = topic
        self.timeout = timeout
        limits = {} if message_max_bytes is None else {"message.max.bytes": message_max_bytes}
        self._producer = Producer(
            {
                **limits,
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
        self._rejected: list[outbox.Quarantine] = []
        self.quarantined_total = 0  # messages rejected for good so far

    def _produce(self, key: str, payload: str, callback: _Delivery) -> None:
        faults.point("mid_publish")
        while True:
            try:
                self._producer.produce(self.topic, payload, key, on_delivery=callback)
                return
            except BufferError:
                self._producer.poll(0.1)  # queue full: serve deliveries, then retry
            except KafkaException as exc:
                # Refused before it was queued (e.g. over message.max.bytes): settled here, as a
                # delivery report would have.
                err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if err is None:
                    err = KafkaError(KafkaError._FAIL, str(exc))
                elif err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    err = KafkaError(err.code(), "refused by the client: over its message.max.bytes")
                callback.settle(err, key, len(payload.encode()))
                return

    def produce_batch(self, conn: psycopg.Connection, batch: OutboxBatch) -> int:
        """Produce a committed outbox batch (its kept messages, else its rows read back by id range).
        The batch is marked published by `mark_published` once the broker confirmed all of them."""
        messages = batch.messages
        if messages is None:
            # Not its rows already published one by one (`runner outbox retry`) or set aside.
            rows = conn.execute(
                "SELECT person_uuid::text, payload FROM recon_outbox "
                "WHERE id BETWEEN %s AND %s AND batch_id = %s AND published_at IS NULL "
                "AND quarantined_at IS NULL AND discarded_at IS NULL ORDER BY id",
                (batch.first_id, batch.last_id, batch.batch_id),
            ).fetchall()
            messages = [(key, payload) for key, payload in rows]
        callback = _Delivery(self, batch.team_id, batch.batch_id, None, len(messages) + 1, batch.job_id)
        for key, payload in messages:
            self._produce(key, payload, callback)
        callback.settle(None, None, None)  # the batch's own count: confirmed once every message is
        self._producer.poll(0)
        return len(messages)

    def produce_unpublished(self, conn: psycopg.Connection) -> int:
        """Produce everything pending in the outbox (earlier runs, any job; never quarantined or discarded
        messages): rows without a batch one by one, then every unpublished batch. Returns the number of
        messages produced."""
        produced = 0
        last_id = 0
        while True:
            rows = conn.execute(
                "SELECT id, team_id, person_uuid::text, payload FROM recon_outbox "
                "WHERE published_at IS NULL AND batch_id IS NULL AND quarantined_at IS NULL "
                "AND discarded_at IS NULL AND id > %s ORDER BY id LIMIT %s",
                (last_id, PAGE_SIZE),
            ).fetchall()
            produced += self.produce_rows(rows)
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

    def produce_rows(self, rows: Iterable[Sequence[Any]]) -> int:
        """Produce outbox rows one by one, (id, team_id, person uuid, payload) each: each is marked
        published (and leaves the quarantine) once confirmed, or quarantined again with its new error."""
        produced = 0
        for outbox_id, team_id, key, payload in rows:
            self._produce(key, payload, _Delivery(self, team_id, None, outbox_id, 1))
            produced += 1
        self._producer.poll(0)
        return produced

    def poll(self) -> None:
        """Serve delivery callbacks that are due."""
        self._producer.poll(0)

    def mark_published(self, conn: psycopg.Connection) -> int:
        """Quarantine the messages rejected for good so far, and mark the batches (and single rows)
        confirmed so far published (on an autocommit connection), in one transaction: a batch is never
        marked published without its quarantined messages. Returns how many batches and rows were
        marked."""
        self._producer.poll(0)
        rejected, self._rejected = self._rejected, []
        batches, self._delivered_batches = self._delivered_batches, []
        rows, self._delivered_rows = self._delivered_rows, []
        if rejected or batches or rows:
            with conn.transaction():
                if rejected:
                    outbox.quarantine(conn, rejected)
                if batches:
                    conn.execute(
                        "UPDATE recon_outbox_batch SET published_at = now() WHERE id = ANY(%s)", (batches,)
                    )
                if rows:
                    outbox.mark_rows_published(conn, rows)
        return len(batches) + len(rows)

    def confirm(self, conn: psycopg.Connection) -> dict[int, str]:
        """Wait for every outstanding delivery (up to the timeout), mark the confirmed batches published
        and the rejected messages quarantined, and return, per team, why some of its messages were not
        confirmed (empty: all delivered or quarantined). The unconfirmed batches stay unpublished for the
        next run."""
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
    """Mark outbox rows published one by one (rows without a batch)."""
    outbox.mark_rows_published(conn, ids)


def pending_count(conn: psycopg.Connection) -> int:
    """Outbox rows waiting to be published (rows of unpublished batches included; quarantined and
    discarded ones are set aside, not pending)."""
    row = conn.execute("SELECT count(*) FROM recon_outbox_status WHERE status = 'pending'").fetchone()
    return int(row[0]) if row else 0


def drain(conn: psycopg.Connection, publisher: Publisher) -> int:
    """Publish every pending outbox row left by earlier runs (any job; quarantined ones are skipped, and
    a message rejected for good now is quarantined, never raised). Returns how many were published.
    Raises PublishError when the broker does not confirm them all (a transient failure)."""
    quarantined_before = publisher.quarantined_total
    produced = publisher.produce_unpublished(conn)
    if not produced:
        publisher.mark_published(conn)  # empty batches, if any
        return 0
    log.info("Publishing %d unpublished outbox messages left by earlier runs", produced)
    publisher.finish(conn)
    published = produced - (publisher.quarantined_total - quarantined_before)
    log.info("Published %d outbox messages left by earlier runs", published)
    return published
