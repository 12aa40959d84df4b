"""Local stand-in for production's person ingestion: the person topic into ClickHouse `person`.

Production ClickHouse reads the topic with a Kafka-engine table and a materialised view. Locally,
`runner warehouse sync-persons` reads every partition with `assign()` (no consumer group: Tansu's
group joins are slow) until each signals its end, and inserts the messages as `person` rows. The table
is a `ReplacingMergeTree(version)` read by highest version, so ingesting a message twice changes
nothing: reading from the beginning every time is correct, only slower. Offsets are remembered in
ClickHouse (`<target schema>.person_topic_offsets`) for `--resume`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from runner.stores.warehouse import ident

log = logging.getLogger(__name__)

BLOCK = 10_000
OFFSETS_TABLE = "person_topic_offsets"
_COLUMNS = [
    "id",
    "created_at",
    "team_id",
    "properties",
    "is_identified",
    "is_deleted",
    "version",
    "_timestamp",
    "_offset",
]


@dataclass
class SyncResult:
    messages: int = 0
    inserted: int = 0
    malformed: int = 0
    partitions: int = 0


def _offsets_ddl(schema: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {ident(schema)}.{OFFSETS_TABLE}
(
    topic String,
    partition Int32,
    next_offset Int64,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY (topic, partition)
"""


def _remembered(client: Client, schema: str, topic: str) -> dict[int, int]:
    rows = client.query(
        f"SELECT partition, argMax(next_offset, updated_at) FROM {ident(schema)}.{OFFSETS_TABLE} "
        "WHERE topic = {topic:String} GROUP BY partition",
        parameters={"topic": topic},
    ).result_rows
    return {int(p): int(o) for p, o in rows}


def _row(value: bytes, timestamp_ms: int, offset: int) -> list[Any] | None:
    try:
        message = json.loads(value)
        created = datetime.strptime(message["created_at"], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
        return [
            uuid.UUID(message["id"]),
            created,
            int(message["team_id"]),
            str(message["properties"]),
            int(message["is_identified"]),
            int(message.get("is_deleted", 0)),
            int(message["version"]),
            datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, UTC).replace(microsecond=0),
            offset,
        ]
    except (ValueError, KeyError, TypeError):
        return None


def eof_consumer(bootstrap: str, name: str) -> Consumer:
    """A consumer for `assign()`-based reads to the end of each partition: no group is joined (Tansu's
    joins take ~20 s) and every partition signals its end, since watermarks cannot be trusted."""
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{name}-{uuid.uuid4().hex}",  # required by the client; never joined
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": False,
            "fetch.wait.max.ms": 50,
            "log_level": 3,
        }
    )


def sync_persons(
    client: Client,
    bootstrap: str,
    topic: str,
    *,
    source_db: str,
    schema: str,
    resume: bool = False,
    timeout: float = 60.0,
) -> SyncResult:
    """Consume `topic` to the end of every partition into `<source_db>.person`."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {ident(schema)}")
    client.command(_offsets_ddl(schema))
    consumer = eof_consumer(bootstrap, "recon-sync")
    result = SyncResult()
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise KafkaException(f"topic {topic!r} does not exist on {bootstrap}")
        partitions = sorted(found.partitions)
        result.partitions = len(partitions)
        start = _remembered(client, schema, topic) if resume else {}
        # Tansu's watermarks cannot be trusted to check a remembered offset beforehand; one past the end
        # (a restarted broker lost its data) never reaches its end, which the timeout below reports.
        assignments = [TopicPartition(topic, p, start.get(p, OFFSET_BEGINNING)) for p in partitions]
        consumer.assign(assignments)
        pending = set(partitions)
        next_offsets: dict[int, int] = {}
        block: list[list[Any]] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                hint = " (a restarted broker forgets offsets: sync --from-beginning)" if resume else ""
                raise TimeoutError(f"partitions {sorted(pending)} of {topic!r} did not reach their end{hint}")
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                    continue
                raise KafkaException(error)
            deadline = time.monotonic() + timeout
            result.messages += 1
            partition, offset = message.partition() or 0, message.offset() or 0
            next_offsets[partition] = offset + 1
            row = _row(message.value() or b"", message.timestamp()[1], offset)
            if row is None:
                result.malformed += 1
                continue
            block.append(row)
            if len(block) >= BLOCK:
                result.inserted += _insert(client, source_db, block)
                block = []
        result.inserted += _insert(client, source_db, block)
        if next_offsets:
            now = datetime.now(UTC)
            client.insert(
                OFFSETS_TABLE,
                [[topic, p, o, now] for p, o in sorted(next_offsets.items())],
                database=schema,
                column_names=["topic", "partition", "next_offset", "updated_at"],
            )
        return result
    finally:
        consumer.close()


def _insert(client: Client, source_db: str, rows: list[list[Any]]) -> int:
    if rows:
        client.insert("person", rows, database=source_db, column_names=_COLUMNS)
    return len(rows)
