"""checkstream.watch's idle rule on a stand-in consumer (no broker): the seconds count once the end is reached."""

import pytest
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from fink.ops import checkstream


class Clock:
    """Time that moves 0.2 s per poll (the watch's poll timeout)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Message:
    def __init__(self, offset):
        self._offset = offset

    def error(self):
        return None

    def value(self):
        return b"not an alert"  # counted, and rejected as undecodable

    def partition(self):
        return 0

    def offset(self):
        return self._offset


class Consumer:
    """One partition holding ``held`` messages that the first fetch only returns after ``slow`` polls."""

    def __init__(self, clock, held, slow):
        self.clock, self.held, self.slow, self.polls, self.read = clock, held, slow, 0, 0
        self.start = None

    def __call__(self, config):
        return self

    def list_topics(self, topic, timeout):
        meta = type("Topic", (), {"error": None, "partitions": {0: None}})()
        return type("Cluster", (), {"topics": {topic: meta}})()

    def assign(self, parts):
        self.start = parts[0].offset

    def poll(self, timeout):
        self.clock.now += timeout
        self.polls += 1
        first = 0 if self.start == OFFSET_BEGINNING else self.held if self.start == OFFSET_END else self.start
        if self.polls <= self.slow or first + self.read >= self.held:
            return None
        self.read += 1
        return Message(first + self.read - 1)

    def position(self, parts):
        first = 0 if self.start == OFFSET_BEGINNING else self.held if self.start == OFFSET_END else self.start
        return [TopicPartition(p.topic, p.partition, first + self.read if self.read else -1001) for p in parts]

    def get_watermark_offsets(self, tp, timeout, cached=False):
        return 0, self.held

    def close(self):
        pass


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(checkstream.time, "monotonic", c)
    return c


@pytest.mark.parametrize("start, expected", [("earliest", 30), (20, 10)])
def test_a_slow_first_fetch_does_not_end_the_watch_before_the_messages(monkeypatch, clock, start, expected):
    consumer = Consumer(clock, held=30, slow=25)  # 5 s before the first message, idle 2 s
    monkeypatch.setattr("confluent_kafka.Consumer", consumer)

    stats = checkstream.watch("127.0.0.1:1", "t", start=start, idle=2)
    assert stats.messages == expected and stats.lag == 0


@pytest.mark.parametrize("start", ["earliest", "latest", 30])
def test_a_watch_at_the_end_of_its_topic_ends_after_idle(monkeypatch, clock, start):
    consumer = Consumer(clock, held=30 if start != "earliest" else 0, slow=0)
    monkeypatch.setattr("confluent_kafka.Consumer", consumer)

    stats = checkstream.watch("127.0.0.1:1", "t", start=start, idle=2)
    assert stats.messages == 0 and 2 <= clock.now < 3


def test_a_topic_whose_messages_never_come_ends_after_the_grace(monkeypatch, clock):
    consumer = Consumer(clock, held=30, slow=10**6)
    monkeypatch.setattr("confluent_kafka.Consumer", consumer)

    stats = checkstream.watch("127.0.0.1:1", "t", idle=2)
    assert stats.messages == 0 and 2 + checkstream.NO_MESSAGE_GRACE <= clock.now < 3 + checkstream.NO_MESSAGE_GRACE


class Watermarks(Consumer):
    """Offsets 10 to 30 held (the first 10 deleted), and a broker that may not answer."""

    def __init__(self, clock, error=None):
        super().__init__(clock, held=30, slow=0)
        self.error = error

    def get_watermark_offsets(self, tp, timeout, cached=False):
        if self.error is not None:
            from confluent_kafka import KafkaException

            raise KafkaException(self.error)
        return 10, 30


def test_the_lag_from_an_offset_already_deleted_counts_from_the_end(clock):
    consumer = Watermarks(clock)
    consumer.assign([TopicPartition("t", 0, 5)])
    assert checkstream._lag(consumer, [TopicPartition("t", 0, 5)], None) == 0
    assert checkstream._lag(consumer, [TopicPartition("t", 0, 12)], None) == 18
    assert checkstream._lag(consumer, [TopicPartition("t", 0, OFFSET_BEGINNING)], None) == 20


def test_a_broker_that_cannot_say_keeps_the_last_lag_and_other_errors_are_raised(clock):
    from confluent_kafka import KafkaError, KafkaException

    parts = [TopicPartition("t", 0, OFFSET_BEGINNING)]
    assert checkstream._lag(Watermarks(clock, KafkaError(KafkaError._TRANSPORT, "down")), parts, 7) == 7
    with pytest.raises(KafkaException):
        checkstream._lag(Watermarks(clock, KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "no")), parts, 7)
