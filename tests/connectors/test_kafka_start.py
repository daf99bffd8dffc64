"""Starting to read a partition whose topic was just created: the brokers may not have elected its leader yet."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connectors.kafka import watermarks
from schemas.errors import ServiceError


class Electing:
    """A consumer whose partition has no leader for the first ``calls`` watermark requests."""

    def __init__(self, calls: int, code: int = KafkaError.NOT_LEADER_FOR_PARTITION) -> None:
        self.calls, self.code = calls, code

    def get_watermark_offsets(self, partition: TopicPartition, timeout: float) -> tuple[int, int]:
        if self.calls > 0:
            self.calls -= 1
            raise KafkaException(KafkaError(self.code))
        return 0, 42


def test_a_partition_without_a_leader_yet_is_read_once_it_has_one():
    assert watermarks(Electing(2), TopicPartition("events", 3)) == (0, 42)


def test_a_partition_that_never_gets_a_leader_is_a_clear_error():
    with pytest.raises(ServiceError, match="topic 'events' partition 3 has no leader after 0 s"):
        watermarks(Electing(1000), TopicPartition("events", 3), wait=0.0)


def test_other_kafka_errors_are_not_waited_for():
    with pytest.raises(KafkaException):
        watermarks(Electing(1, KafkaError.TOPIC_AUTHORIZATION_FAILED), TopicPartition("events", 3))
