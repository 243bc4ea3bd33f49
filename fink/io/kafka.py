"""Kafka clients: confluent-kafka for Python producers and consumers, options for Spark's source.

Credentials are never parameters. A client of the local broker's internal listener
(``kafka_port`` of ``$FINK_HOME/services.yaml``) authenticates as the service account
(:data:`fink.config.SERVICE_ACCOUNT`, its password in ``$FINK_HOME/secrets/kafka_service``),
the only identity that listener accepts. ``FINK_KAFKA_USERNAME`` and the secret
``kafka_password`` (see :func:`fink.config.secret`), when both are set, are used instead, for
any broker (one run elsewhere, for instance). Every client uses SASL/SCRAM-SHA-512, as the
Fink community client does, or plaintext when it has no credentials.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from fink.config import LOOPBACK, SERVICE_ACCOUNT, ServicesConfig, secret, service_password
from fink.errors import FinkError
from fink.log import logger


class KafkaError(FinkError, RuntimeError):
    """A produce, consume or admin request failed."""


def internal(bootstrap: str) -> bool:
    """Whether ``bootstrap`` is the local broker's internal listener (loopback, ``kafka_port``)."""
    port = ServicesConfig.load().kafka_port
    servers = [s.strip().rpartition(":") for s in bootstrap.split(",") if s.strip()]
    return bool(servers) and all(host.strip("[]") in LOOPBACK and p == str(port) for host, _, p in servers)


def credentials(bootstrap: str) -> tuple[str, str] | None:
    """The (user, password) a client of ``bootstrap`` authenticates with, or None for plaintext."""
    user, password = secret("kafka_username"), secret("kafka_password")
    if user and password:
        return user, password
    if internal(bootstrap):
        password = service_password()
        if password:
            return SERVICE_ACCOUNT, password
    return None


def sasl_config(bootstrap: str, user: str, password: str, **extra: Any) -> dict[str, Any]:
    """A confluent-kafka configuration that authenticates ``user`` with SCRAM-SHA-512."""
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user, "sasl.password": password, **extra}


def client_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Return a confluent-kafka configuration for ``bootstrap``, authenticated as :func:`credentials` says."""
    found = credentials(bootstrap)
    if found is None:
        return {"bootstrap.servers": bootstrap, **extra}
    return sasl_config(bootstrap, *found, **extra)


def spark_options(bootstrap: str) -> dict[str, str]:
    """Return the ``kafka.*`` options of Spark's Kafka source and sink for ``bootstrap``
    (authenticated as :func:`client_config`)."""
    opts = {"kafka.bootstrap.servers": bootstrap}
    found = credentials(bootstrap)
    if found:
        user, password = found
        opts["kafka.security.protocol"] = "SASL_PLAINTEXT"
        opts["kafka.sasl.mechanism"] = "SCRAM-SHA-512"
        # the JAAS line carries the password: it stays in memory, in the query's options only
        opts["kafka.sasl.jaas.config"] = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{password}";')
    return opts


def fetch(bootstrap: str, wanted: Iterable[tuple[str, int, int]], timeout: float = 30.0) -> dict[tuple, bytes | None]:
    """The values of the messages at (topic, partition, offset) ``wanted``, read by offset.

    A message no longer in Kafka (retention) is absent from the result. A partition read
    that makes no progress for ``timeout`` seconds (the broker down) raises :class:`KafkaError`:
    the caller's batch fails and runs again, rather than lose the bytes it wanted.
    """
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka import KafkaError as ConfluentError

    by_partition: dict[tuple[str, int], set[int]] = {}
    for topic, partition, offset in wanted:
        by_partition.setdefault((topic, int(partition)), set()).add(int(offset))
    found: dict[tuple, bytes | None] = {}
    if not by_partition:
        return found
    consumer = Consumer(client_config(bootstrap, **{"group.id": "fink-fetch-by-offset", "enable.auto.commit": False,
                                                    "enable.partition.eof": True}))
    try:
        for (topic, partition), offsets in by_partition.items():
            consumer.assign([TopicPartition(topic, partition, min(offsets))])
            last, deadline = max(offsets), time.monotonic() + timeout
            passing, ended = None, False
            while not ended and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == ConfluentError._PARTITION_EOF:
                        ended = True
                    elif transient(msg.error()):  # a broker restarting: polled again until the deadline
                        passing = msg.error()
                    else:
                        raise KafkaError(f"{topic}[{partition}] on {bootstrap}: {msg.error()}")
                    continue
                deadline = time.monotonic() + timeout
                if msg.offset() in offsets:
                    found[(topic, partition, msg.offset())] = msg.value()
                ended = msg.offset() >= last
            if not ended:
                raise KafkaError(f"{topic}[{partition}] on {bootstrap}: offset {last} not reached, no progress for "
                                 f"{timeout:.0f} s" + (f" ({passing})" if passing is not None else ""))
    finally:
        consumer.close()
    return found


#: metadata requests asked again while no broker answers (a broker restarting): up to this many times
METADATA_ATTEMPTS = 4


def metadata(admin: Any, timeout: float, topic: str | None = None) -> Any:
    """``admin.list_topics``, asked again (up to :data:`METADATA_ATTEMPTS` times ``timeout``) while the
    broker does not answer: a stage that meets a broker restart rides it out instead of failing."""
    from confluent_kafka import KafkaError as Error
    from confluent_kafka import KafkaException

    unanswered = {Error._TIMED_OUT, Error._TRANSPORT, Error._ALL_BROKERS_DOWN}
    for attempt in range(1, METADATA_ATTEMPTS + 1):
        try:
            return admin.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            if attempt == METADATA_ATTEMPTS or exc.args[0].code() not in unanswered:
                raise
            logger.warning("no metadata from the Kafka broker (%s): asking again (%d of %d)",
                           exc.args[0].str(), attempt + 1, METADATA_ATTEMPTS)


def ensure_topic(bootstrap: str, topic: str, partitions: int = 1, timeout: float = 30.0,
                 config: dict[str, str] | None = None) -> bool:
    """Create ``topic`` if it does not exist (with ``config``: ``retention.ms``, ``cleanup.policy``...)
    and wait until every partition has a leader; return True if it was created.

    Waiting for the leaders means the first write to a new topic never meets "leader not
    available".
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(bootstrap))
    created = False
    track(topic)
    if topic not in metadata(admin, timeout).topics:
        future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                               config=dict(config or {}))])[topic]
        try:
            future.result(timeout)
            created = True
        except Exception as exc:  # confluent raises KafkaException wrapping a KafkaError
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise KafkaError(f"cannot create topic {topic!r} on {bootstrap}: {exc}") from exc
    deadline = time.monotonic() + timeout
    while True:
        meta = metadata(admin, timeout, topic).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions and \
                all(p.leader >= 0 for p in meta.partitions.values()):
            return created
        if time.monotonic() > deadline:
            raise KafkaError(f"topic {topic!r} on {bootstrap}: no leader after {timeout:.0f} s "
                             f"({meta.error if meta is not None else 'not in the metadata'})")
        time.sleep(0.2)


def topics(bootstrap: str, timeout: float = 30.0) -> set[str]:
    """The names of the topics on ``bootstrap``, Kafka's internal ones (``__*``) left out."""
    from confluent_kafka.admin import AdminClient

    names = AdminClient(client_config(bootstrap)).list_topics(timeout=timeout).topics
    return {name for name in names if not name.startswith("__")}


def delete_topics(bootstrap: str, names: Iterable[str], timeout: float = 60.0) -> list[str]:
    """Delete the topics ``names`` (and their data on disk); return those deleted.

    A topic that is already gone is not an error. Tests and benchmarks call it on what
    they created, so the broker's disk does not fill up with their data.
    """
    from confluent_kafka.admin import AdminClient

    names = sorted(set(names))
    if not names:
        return []
    admin = AdminClient(client_config(bootstrap))
    deleted, failed = [], []
    for name, future in admin.delete_topics(names, operation_timeout=timeout).items():
        try:
            future.result(timeout)
            deleted.append(name)
        except Exception as exc:  # KafkaException wrapping UNKNOWN_TOPIC_OR_PART when already gone
            if "UNKNOWN_TOPIC" not in str(exc):
                failed.append(f"{name}: {exc}")
    if failed:
        raise KafkaError(f"cannot delete topics on {bootstrap}: {'; '.join(failed)}")
    return deleted


#: the environment variable naming the file where the topics made inside a
#: :func:`temporary_topics` block are listed (child processes inherit it)
TEMPORARY_TOPICS = "FINK_TEMPORARY_TOPICS"


def track(topic: str) -> None:
    """List ``topic`` as made inside the current :func:`temporary_topics` block, if any."""
    path = os.environ.get(TEMPORARY_TOPICS)
    if path:
        with open(path, "a") as f:
            f.write(topic + "\n")


@contextmanager
def temporary_topics(bootstrap: str) -> Iterator[str]:
    """Delete, on exit, the topics this process and its children made inside the block.

    For tests and benchmarks: without it every run leaves its topics' data on the
    broker's disk. The topics go by name: those :func:`ensure_topic` (and so the simulator,
    distribution, the delivery log) made or met while the block ran, listed in a file that
    child processes inherit (:data:`TEMPORARY_TOPICS`); a topic another process made
    meanwhile stays, as do the topics there before the block. If the broker is down on
    exit, or a deletion fails, the topics left are logged: the block's own outcome stands.
    """
    import tempfile

    before = topics(bootstrap)
    fd, path = tempfile.mkstemp(prefix="fink-topics-", suffix=".txt")
    os.close(fd)
    outer = os.environ.get(TEMPORARY_TOPICS)
    os.environ[TEMPORARY_TOPICS] = path
    try:
        yield bootstrap
    finally:
        if outer is None:
            os.environ.pop(TEMPORARY_TOPICS, None)
        else:
            os.environ[TEMPORARY_TOPICS] = outer
        with open(path) as f:
            made = {line.strip() for line in f if line.strip()} - before
        os.unlink(path)
        try:
            current = topics(bootstrap, timeout=10.0)
        except Exception:  # the broker is down: its topics stay, nothing else to do
            current = set()
        try:
            delete_topics(bootstrap, made & current)
        except KafkaError as exc:
            logger.warning("temporary topics left on the broker: %s", exc)


def end_offsets(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Return ``{partition: next offset}`` of ``topic`` (where a reader starting now would begin)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(client_config(bootstrap, **{"group.id": "fink-offsets", "enable.auto.commit": False}))
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise KafkaError(f"topic {topic!r} on {bootstrap}: {meta.error}")
        deadline = time.monotonic() + timeout
        offsets: dict[int, int] = {}
        for p in sorted(meta.partitions):
            while p not in offsets:
                try:
                    offsets[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
                except Exception as exc:  # KafkaException; a new topic's leader may not serve yet
                    if not transient(exc) or time.monotonic() > deadline:
                        raise KafkaError(f"cannot read the end offsets of {topic!r} partition {p} "
                                         f"on {bootstrap}: {exc}") from exc
                    time.sleep(0.2)
        return offsets
    finally:
        consumer.close()


def start_offsets(bootstrap: str, partitions: Iterable[tuple[str, int]], timeout: float = 30.0) -> dict[tuple, int]:
    """``{(topic, partition): first offset still in the log}`` (after retention or a deletion)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(client_config(bootstrap, **{"group.id": "fink-offsets", "enable.auto.commit": False}))
    try:
        return {(t, int(p)): int(consumer.get_watermark_offsets(TopicPartition(t, int(p)), timeout=timeout)[0])
                for t, p in partitions}
    finally:
        consumer.close()


# What librdkafka reports for a short while after a topic was created (its leader named in the
# metadata but not serving yet), while a broker restarts, or when a request waits on a loaded machine.
_PASSING = frozenset({"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE", "UNKNOWN_TOPIC_OR_PART", "_TRANSPORT",
                      "_ALL_BROKERS_DOWN", "_TIMED_OUT"})


def transient(error: Any) -> bool:
    """Whether a librdkafka error (a ``KafkaError``, or a ``KafkaException`` wrapping one) passes
    if the request is made again a moment later."""
    if isinstance(error, BaseException):
        error = error.args[0] if error.args else error
    retriable = getattr(error, "retriable", None)
    if callable(retriable) and retriable():
        return True
    if callable(getattr(error, "name", None)):
        return error.name() in _PASSING
    return any(code in str(error) for code in _PASSING)  # a message only: the code name in it


def starting_offsets_json(topic: str, offsets: dict[int, int]) -> str:
    """Spark's ``startingOffsets`` JSON for explicit per-partition offsets."""
    import json

    return json.dumps({topic: {str(p): o for p, o in offsets.items()}})


def produce(bootstrap: str, topic: str, values: Iterable[bytes], keys: Iterable[bytes | None] | None = None,
            timeout: float = 60.0, **config: Any) -> int:
    """Send ``values`` to ``topic`` and wait for every delivery; return how many were acknowledged.

    Raises
    ------
    KafkaError
        If any message was not acknowledged (the first error is reported).
    """
    keyed = zip(keys, values, strict=True) if keys is not None else ((None, v) for v in values)
    return produce_messages(bootstrap, ((topic, k, v) for k, v in keyed), timeout, **config)


def produce_messages(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]], timeout: float = 60.0,
                     **config: Any) -> int:
    """Send ``(topic, key, value)`` messages with one idempotent producer and wait up to ``timeout``
    seconds for every delivery; return how many were acknowledged.

    Raises
    ------
    KafkaError
        If any message was not acknowledged (the first error is reported).
    """
    from confluent_kafka import Producer

    producer = Producer(client_config(bootstrap, **{"enable.idempotence": True, "linger.ms": 5,
                                                    "message.max.bytes": 10485760, **config}))
    errors: list[str] = []
    acked = 0
    topics: set[str] = set()

    def on_delivery(err, _msg):
        nonlocal acked
        if err is not None:
            errors.append(str(err))
        else:
            acked += 1

    for topic, key, value in messages:
        topics.add(topic)
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(timeout)
    if errors or remaining:
        raise KafkaError(f"{len(errors) + remaining} message(s) to {', '.join(map(repr, sorted(topics)))} on "
                         f"{bootstrap} not delivered" + (f": {errors[0]}" if errors else f" within {timeout:.0f} s"))
    return acked
