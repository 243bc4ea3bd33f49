"""BatchPublisher's transaction handling, on a stand-in producer (no broker)."""

import pytest
from confluent_kafka import KafkaError, KafkaException

from fink.io import kafka
from fink.io.delivery import BatchPublisher


class Producer:
    """Records the calls; ``commit_transaction`` raises the given errors, one per call, first."""

    def __init__(self, *errors):
        self.errors, self.calls, self.sent = list(errors), [], []

    def begin_transaction(self):
        self.calls.append("begin")

    def produce(self, topic, value, key):
        self.sent.append(topic)

    def commit_transaction(self, timeout):
        self.calls.append("commit")
        if self.errors:
            raise KafkaException(self.errors.pop(0))

    def abort_transaction(self, timeout):
        self.calls.append("abort")


def publisher(producer, retry_for=300.0) -> BatchPublisher:
    pub = BatchPublisher.__new__(BatchPublisher)  # no broker: the stand-in producer, no delivery log
    pub.writer, pub.log_topic, pub.timeout, pub.retry_for = "w", "log", 1.0, retry_for
    pub.producer, pub.last = producer, None
    return pub


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "2 message(s) remaining", retriable=True)
FENCED = KafkaError(KafkaError._FENCED, "fenced", fatal=True)


def test_a_commit_that_timed_out_while_the_broker_restarted_is_retried_not_aborted():
    producer = Producer(TIMED_OUT, TIMED_OUT)
    assert publisher(producer).publish(4, [("t", None, b"a"), ("t", None, b"b")]) == {"t": 2}
    assert producer.calls == ["begin", "commit", "commit", "commit"] and producer.sent == ["t", "t", "log"]


def test_a_commit_that_cannot_be_retried_or_keeps_failing_aborts_and_says_which_batch():
    for producer, retry_for in ((Producer(FENCED), 300.0), (Producer(*[TIMED_OUT] * 3), 0.0)):
        pub = publisher(producer, retry_for)
        with pytest.raises(kafka.KafkaError, match="batch 4 not delivered"):
            pub.publish(4, [("t", None, b"a")])
        assert producer.calls[-1] == "abort" and pub.last is None
