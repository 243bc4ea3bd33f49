"""Exactly-once delivery of micro-batches to Kafka: one transaction per batch.

A streaming query's sink is replayed after a crash: Spark runs the last batch again if it
did not record it as done. Spark's own Kafka sink then writes it twice. Here each batch is
written in one Kafka transaction that also holds a record of the batch id in a log topic
(:data:`LOG_TOPIC`, keyed by the writer). So either the batch's messages and its record are
both visible to readers, or neither is:

- a crash before the commit leaves an open transaction; the restarted writer (same
  ``transactional.id``) fences the old one and Kafka aborts it, so readers never see it;
- a crash after the commit but before Spark recorded the batch: the replayed batch finds
  its id in the log and is skipped.

Readers see each message once if they read committed data only (``isolation.level=
read_committed``), which is librdkafka's default and so what the Fink client does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from fink.io import kafka
from fink.log import logger

#: compacted topic of the last batch each writer delivered (key: writer id, value: JSON)
LOG_TOPIC = "fink_delivery_log"
#: ZTF alerts with their added values are up to a few hundred KB; the broker accepts 10 MB
MAX_MESSAGE_BYTES = 10 * 1024 * 1024


def last_delivered(bootstrap: str, writer: str, log_topic: str = LOG_TOPIC, timeout: float = 30.0) -> int | None:
    """The id of the last batch ``writer`` committed, from the log topic (committed records only)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka import KafkaError as ConfluentError

    consumer = Consumer(kafka.client_config(bootstrap, **{
        "group.id": f"fink-delivery-{writer}", "enable.auto.commit": False, "enable.partition.eof": True,
        "isolation.level": "read_committed"}))
    last = None
    try:
        meta = kafka.metadata(consumer, min(timeout, 30.0), log_topic).topics[log_topic]
        parts = sorted(meta.partitions)
        consumer.assign([TopicPartition(log_topic, p, -2) for p in parts])  # -2: the beginning
        pending, deadline = set(parts), time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == ConfluentError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                if kafka.transient(msg.error()):  # a broker restarting: polled again until the deadline
                    continue
                raise kafka.KafkaError(f"{log_topic} on {bootstrap}: {msg.error()}")
            if msg.key() == writer.encode():
                batch = int(json.loads(msg.value())["batch"])
                last = batch if last is None else max(last, batch)
        if pending:
            raise kafka.KafkaError(f"{log_topic} on {bootstrap}: not read to its end within {timeout:.0f} s")
    finally:
        consumer.close()
    return last


class BatchPublisher:
    """Write each micro-batch's messages in one transaction, at most once per batch id.

    Parameters
    ----------
    bootstrap
        The Kafka broker (the internal listener).
    writer
        A stable identity across restarts of the same query (e.g. its checkpoint's query id):
        the transactional id and the key of its records in the log topic.
    """

    def __init__(self, bootstrap: str, writer: str, log_topic: str = LOG_TOPIC, timeout: float = 60.0,
                 retry_for: float = 300.0):
        from confluent_kafka import Producer

        self.bootstrap, self.writer, self.log_topic, self.timeout = bootstrap, writer, log_topic, timeout
        self.retry_for = retry_for
        kafka.ensure_topic(bootstrap, log_topic, config={"cleanup.policy": "compact"})
        self.producer = Producer(kafka.client_config(bootstrap, **{
            "transactional.id": f"fink-{writer}", "compression.type": "lz4", "linger.ms": 10,
            # a batch of 40,000 alerts takes minutes to send on a small machine: the broker must
            # not abort its transaction meanwhile (a crashed writer's is fenced at its restart)
            "message.max.bytes": MAX_MESSAGE_BYTES, "transaction.timeout.ms": 600000}))
        # fences an earlier instance with this id: Kafka aborts whatever it left open. A broker
        # restarting meanwhile is waited for (up to ``retry_for``), as a commit would wait for it
        self._retried("init", lambda: self.producer.init_transactions(timeout))
        self.last = last_delivered(bootstrap, writer, log_topic, timeout=retry_for)

    def delivered(self, batch_id: int) -> bool:
        return self.last is not None and batch_id <= self.last

    def publish(self, batch_id: int, messages: Iterable[tuple[str, bytes | None, bytes]],
                info: dict[str, Any] | None = None) -> dict[str, int] | None:
        """Send ``(topic, key, value)`` messages and the batch's record atomically.

        Returns the number of messages per topic, or None when the batch was delivered
        already (a replay after a restart).
        """
        from confluent_kafka import KafkaException

        if self.delivered(batch_id):
            logger.info("delivery %s: batch %d already delivered, skipped", self.writer, batch_id)
            return None
        counts: dict[str, int] = {}
        self.producer.begin_transaction()
        try:
            for topic, key, value in messages:
                self._produce(topic, key, value)
                counts[topic] = counts.get(topic, 0) + 1
            record = {"batch": batch_id, "messages": counts, "time": time.time(), **(info or {})}
            self._produce(self.log_topic, self.writer.encode(), json.dumps(record).encode())
            self._commit(batch_id)
        except KafkaException as exc:
            self._abort()
            raise kafka.KafkaError(f"delivery {self.writer}: batch {batch_id} not delivered: {exc}") from exc
        except BaseException:
            self._abort()
            raise
        self.last = batch_id
        return counts

    def _commit(self, batch_id: int) -> None:
        """Commit the open transaction; a retriable error (the broker restarting, a flush timed
        out) is retried, as Kafka's client allows, for up to ``retry_for`` seconds."""
        self._retried(f"batch {batch_id}: commit", lambda: self.producer.commit_transaction(self.timeout))

    def _retried(self, what: str, call: Any) -> None:
        """``call()``, called again while it raises a retriable error, for up to ``retry_for`` seconds."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                if not exc.args[0].retriable() or time.monotonic() >= deadline:
                    raise
                logger.warning("delivery %s: %s retried (%s)", self.writer, what, exc.args[0])

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key)
                return
            except BufferError:  # the local queue is full: let it drain
                self.producer.poll(0.1)

    def _abort(self) -> None:
        try:
            self.producer.abort_transaction(self.timeout)
        except Exception as exc:  # noqa: BLE001 - the original error is the one to raise
            logger.warning("delivery %s: abort failed (%s); the next start fences it", self.writer, exc)
