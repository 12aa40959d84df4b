"""Which Kafka errors quarantine a message, and how a delivery report settles an outbox batch or row.

The delivery callback is driven with the KafkaError values librdkafka reports; no broker is involved
(the real-stack behaviour is in tests/integration/test_outbox.py)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from runner.stores import outbox
from runner.stores.publisher import Publisher, _Delivery, describe, is_permanent


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
    ],
)
def test_errors_about_the_message_itself_are_permanent(code):
    assert is_permanent(KafkaError(code))


@pytest.mark.parametrize(
    "code",
    [
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._PURGE_QUEUE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError._UNKNOWN_TOPIC,
    ],
)
def test_errors_about_the_broker_or_topic_stay_transient(code):
    assert not is_permanent(KafkaError(code))


def test_a_fatal_producer_error_is_never_a_quarantine():
    assert not is_permanent(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, fatal=True))


def test_describe_names_the_error_and_size():
    text = describe(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), 1_200_189)
    assert text == "MSG_SIZE_TOO_LARGE: Broker: Message size too large (message of 1200189 bytes)"


class _Msg:
    """The two things the callback reads from a delivered message."""

    def __init__(self, key: str, size: int):
        self._key = key.encode()
        self._size = size

    def key(self) -> bytes:
        return self._key

    def __len__(self) -> int:
        return self._size


@pytest.fixture
def publisher():
    pub = Publisher("127.0.0.1:1", "unused", timeout=1.0)  # never produces here
    yield pub
    pub.close()


def test_a_rejected_message_is_quarantined_and_the_rest_of_its_batch_published(publisher):
    delivery = _Delivery(publisher, team_id=1, batch_id=7, row_id=None, n=4, job_id="job-a")
    delivery(None, _Msg("a", 10))
    delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), _Msg("b", 2_000_000))
    delivery(None, _Msg("c", 10))
    delivery.settle(None, None, None)  # the batch's own count
    assert publisher._delivered_batches == [7]
    assert publisher._failed == {}
    assert publisher._rejected == [
        outbox.Quarantine(
            "MSG_SIZE_TOO_LARGE: Broker: Message size too large (message of 2000000 bytes)",
            batch_id=7,
            person_uuid="b",
            job_id="job-a",
            team_id=1,
        )
    ]
    assert publisher.quarantined_total == 1


def test_a_transient_failure_keeps_the_whole_batch_pending(publisher):
    delivery = _Delivery(publisher, team_id=1, batch_id=7, row_id=None, n=3)
    delivery(KafkaError(KafkaError._MSG_TIMED_OUT), _Msg("a", 10))
    delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), _Msg("b", 2_000_000))
    delivery.settle(None, None, None)
    assert publisher._delivered_batches == []
    assert list(publisher._failed) == [1]
    assert [q.person_uuid for q in publisher._rejected] == ["b"]


def test_a_rejected_single_row_is_quarantined_not_published(publisher):
    rejected = _Delivery(publisher, team_id=1, batch_id=None, row_id=41, n=1)
    rejected(KafkaError(KafkaError.INVALID_RECORD), _Msg("a", 10))
    delivered = _Delivery(publisher, team_id=1, batch_id=None, row_id=42, n=1)
    delivered(None, _Msg("b", 10))
    assert publisher._delivered_rows == [42]
    assert [(q.row_id, q.batch_id) for q in publisher._rejected] == [(41, None)]
