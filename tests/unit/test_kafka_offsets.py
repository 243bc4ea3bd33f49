"""kafka.end_offsets on a stand-in consumer (no broker): a leader that is not serving yet is waited for."""

import pytest
from confluent_kafka import KafkaError, KafkaException

from fink import kafka


class Consumer:
    """A topic of two partitions whose watermark reads raise ``errors`` first, one per call."""

    def __init__(self, *errors):
        self.errors, self.reads, self.closed = list(errors), 0, False

    def __call__(self, config):  # stands for the class: kafka.end_offsets builds it
        return self

    def list_topics(self, topic, timeout):
        meta = type("Topic", (), {"error": None, "partitions": {0: None, 1: None}})()
        return type("Cluster", (), {"topics": {topic: meta}})()

    def get_watermark_offsets(self, tp, timeout):
        self.reads += 1
        if self.errors:
            raise KafkaException(self.errors.pop(0))
        return 0, 10 * (tp.partition + 1)

    def close(self):
        self.closed = True


NOT_LEADER = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, "Broker: Not leader for partition")
AUTH = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed")


def test_a_new_topics_leader_not_serving_yet_is_retried(monkeypatch):
    consumer = Consumer(NOT_LEADER, NOT_LEADER)
    monkeypatch.setattr("confluent_kafka.Consumer", consumer)
    monkeypatch.setattr(kafka.time, "sleep", lambda s: None)

    assert kafka.end_offsets("127.0.0.1:1", "t") == {0: 10, 1: 20}
    assert consumer.reads == 4 and consumer.closed


def test_an_error_that_waiting_does_not_mend_is_raised_at_once_naming_the_partition(monkeypatch):
    consumer = Consumer(AUTH, NOT_LEADER)
    monkeypatch.setattr("confluent_kafka.Consumer", consumer)

    with pytest.raises(kafka.KafkaError, match=r"'t' partition 0 .*authorization"):
        kafka.end_offsets("127.0.0.1:1", "t")
    assert consumer.reads == 1 and consumer.closed


def test_a_leader_that_never_serves_fails_after_the_timeout(monkeypatch):
    consumer = Consumer(*[NOT_LEADER] * 1000)
    monkeypatch.setattr("confluent_kafka.Consumer", consumer)
    clock = iter(range(0, 10000, 5))
    monkeypatch.setattr(kafka.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(kafka.time, "sleep", lambda s: None)

    with pytest.raises(kafka.KafkaError, match="Not leader"):
        kafka.end_offsets("127.0.0.1:1", "t", timeout=30)
    assert 2 <= consumer.reads <= 10


@pytest.mark.parametrize("error, passing", [
    (NOT_LEADER, True), (KafkaError(KafkaError._TRANSPORT, "Disconnected"), True),
    (KafkaError(KafkaError._ALL_BROKERS_DOWN, "down"), True), (KafkaError(KafkaError._TIMED_OUT, "t"), True),
    (KafkaError(KafkaError.INVALID_PARTITIONS, "x", retriable=True), True),  # librdkafka says so
    (AUTH, False), (KafkaError(KafkaError._UNKNOWN_PARTITION, "no such partition"), False),
])
def test_transient_errors_are_those_a_moment_mends(error, passing):
    assert kafka.transient(error) is passing
    assert kafka.transient(KafkaException(error)) is passing
