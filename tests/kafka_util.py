"""Reading Kafka topics in tests.

Tansu's consumer-group joins take about 20 s, so tests read with `assign()` and no group; its high
watermarks can be wrong after batched produces, so a partition is read until the consumer signals
its end (`enable.partition.eof`), not up to the reported watermark.
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from runner.local.person_sync import eof_consumer


def read_topic(bootstrap: str, topic: str, timeout: float = 15.0) -> list[Message]:
    """Every message of `topic`, all partitions from the beginning, ordered by (partition, offset).

    A topic that does not exist reads as empty. Raises TimeoutError when some partition has not
    signalled its end within `timeout` seconds.
    """
    consumer = eof_consumer(bootstrap, "recon-test")
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
        topic_meta = metadata.topics.get(topic)
        if topic_meta is None or topic_meta.error is not None or not topic_meta.partitions:
            return []
        partitions = sorted(topic_meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions {sorted(pending)} of {topic!r} did not reach their end")
            message = consumer.poll(0.2)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                    continue
                raise KafkaException(error)
            messages.append(message)
        messages.sort(key=lambda m: (m.partition(), m.offset()))
        return messages
    finally:
        consumer.close()


def read_topic_json(bootstrap: str, topic: str, timeout: float = 15.0) -> list[tuple[str | None, Any]]:
    """`read_topic` decoded: (key as text, value parsed as JSON) per message."""
    decoded: list[tuple[str | None, Any]] = []
    for message in read_topic(bootstrap, topic, timeout):
        key = message.key()
        value = message.value()
        decoded.append(
            (
                key.decode() if isinstance(key, bytes) else key,
                json.loads(value) if value is not None else None,
            )
        )
    return decoded
