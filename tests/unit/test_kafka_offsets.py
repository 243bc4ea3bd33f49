"""kafka.end_offsets on a stand-in consumer (no broker): a leader that is not serving yet is waited for."""

import pytest
from confluent_kafka import KafkaError, KafkaException

from fink.io import kafka


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


class Reader:
    """fetch's consumer: a partition whose polls give ``script`` (errors, offsets, or None) in turn."""

    def __init__(self, *script):
        self.script = list(script)

    def __call__(self, config):
        return self

    def assign(self, parts):
        pass

    def poll(self, timeout):
        item = self.script.pop(0) if self.script else None
        if item is None or isinstance(item, KafkaError):
            return None if item is None else type("Msg", (), {"error": lambda s, e=item: e})()
        return type("Msg", (), {"error": lambda s: None, "offset": lambda s, o=item: o,
                                "value": lambda s, o=item: b"v%d" % o})()

    def close(self):
        pass


TRANSPORT = KafkaError(KafkaError._TRANSPORT, "Disconnected")


def test_fetch_reads_through_a_broker_restart(monkeypatch):
    monkeypatch.setattr("confluent_kafka.Consumer", Reader(TRANSPORT, None, TRANSPORT, 4, 5, 6))
    assert kafka.fetch("127.0.0.1:1", [("t", 0, 4), ("t", 0, 6)]) == {("t", 0, 4): b"v4", ("t", 0, 6): b"v6"}


def test_fetch_from_a_broker_that_stays_down_raises_rather_than_lose_the_bytes(monkeypatch):
    monkeypatch.setattr("confluent_kafka.Consumer", Reader(*[TRANSPORT] * 10**4))
    clock = iter(range(0, 10**6, 1))
    monkeypatch.setattr(kafka.time, "monotonic", lambda: next(clock))
    with pytest.raises(kafka.KafkaError, match=r"t\[0\].*offset 6 not reached.*Disconnected"):
        kafka.fetch("127.0.0.1:1", [("t", 0, 4), ("t", 0, 6)], timeout=30)


def test_fetch_of_offsets_gone_to_retention_returns_without_them(monkeypatch):
    eof = KafkaError(KafkaError._PARTITION_EOF, "eof")
    monkeypatch.setattr("confluent_kafka.Consumer", Reader(eof))
    assert kafka.fetch("127.0.0.1:1", [("t", 0, 4)]) == {}


def test_temporary_topics_that_cannot_be_deleted_are_logged_and_the_block_stands(monkeypatch, caplog):
    listed = iter([{"kept"}, {"kept", "made"}])
    monkeypatch.setattr(kafka, "topics", lambda bootstrap, timeout=30.0: next(listed))
    asked = []

    def delete(bootstrap, names):
        asked.append(set(names))
        raise kafka.KafkaError("cannot delete topics on 127.0.0.1:1: made: REQUEST_TIMED_OUT")

    monkeypatch.setattr(kafka, "delete_topics", delete)
    with caplog.at_level("WARNING", logger="fink"), kafka.temporary_topics("127.0.0.1:1"):
        kafka.track("made")
    assert asked == [{"made"}] and "temporary topics left on the broker" in caplog.text and "made" in caplog.text


class _Admin:
    """list_topics failing ``failures`` times with ``code``, then answering."""

    def __init__(self, failures, code):
        self.failures, self.code, self.calls = failures, code, 0

    def list_topics(self, topic=None, timeout=-1):
        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code, "Failed to get metadata: Local: Timed out"))
        return "metadata"


def test_metadata_is_asked_again_through_a_broker_restart():
    admin = _Admin(failures=kafka.METADATA_ATTEMPTS - 1, code=KafkaError._TIMED_OUT)
    assert kafka.metadata(admin, 0.1) == "metadata" and admin.calls == kafka.METADATA_ATTEMPTS


def test_metadata_from_a_broker_that_stays_down_or_refuses_is_an_error():
    admin = _Admin(failures=kafka.METADATA_ATTEMPTS, code=KafkaError._TIMED_OUT)
    with pytest.raises(KafkaException):
        kafka.metadata(admin, 0.1)
    assert admin.calls == kafka.METADATA_ATTEMPTS
    refused = _Admin(failures=1, code=KafkaError.TOPIC_AUTHORIZATION_FAILED)  # waiting does not mend it
    with pytest.raises(KafkaException):
        kafka.metadata(refused, 0.1)
    assert refused.calls == 1
