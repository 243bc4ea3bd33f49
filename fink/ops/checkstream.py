"""Watch a Kafka topic: counts, rates, lag, the latest alerts, and every undecodable message.

:func:`watch` consumes a topic from a chosen offset without joining a consumer group's
commits (it only reads), decodes each message as an alert of its survey (ZTF by default,
Rubin with ``survey="rubin"``: :func:`fink.survey.wire.decoder`), and keeps a
:class:`StreamStats` that the CLI prints and the notebook shows live. A message that is
not an alert is counted under its reason and never stops the watch.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fink.io import kafka
from fink.survey import description as surveys
from fink.survey.avro import JD_UNIX_EPOCH, AlertDecodeError, Decoded

#: ZTF's filter ids; other surveys name their bands
BANDS = {1: "g", 2: "r", 3: "i"}


def jd_to_iso(jd: float) -> str:
    return dt.datetime.fromtimestamp((jd - JD_UNIX_EPOCH) * 86400, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


class RecentIds:
    """The alert ids seen lately, in bounded memory: two generations of at most ``limit`` ids
    each (sorted int64 arrays, :class:`fink.stages.duplicates.NightIds`), the older dropped
    when the newer fills. A repeat is caught while its first copy is among the last
    ``limit`` to ``2 * limit`` ids (5 to 10 million by default: a Rubin night), in at most
    about 16 bytes an id."""

    def __init__(self, limit: int = 5_000_000):
        from fink.stages.duplicates import NightIds

        self.limit, self._new = limit, NightIds
        self.older, self.newer = NightIds(), NightIds()

    def __len__(self) -> int:
        return len(self.older) + len(self.newer)

    def __iter__(self):
        yield from self.older
        yield from self.newer

    @staticmethod
    def _int(key: Any) -> int:
        return key if isinstance(key, int) else hash(key)  # an id that is not a number: its hash

    def __contains__(self, key: Any) -> bool:
        key = self._int(key)
        return self.newer.contains([key])[0] or self.older.contains([key])[0]

    def add(self, key: Any) -> None:
        self.newer.update([self._int(key)])
        if len(self.newer) >= self.limit:
            self.older, self.newer = self.newer, self._new()


@dataclass
class StreamStats:
    """What a watch has seen so far (``latest`` rows: the survey's object and alert ids as
    ``objectId`` and ``candid``, time, band, brightness in the survey's unit)."""

    topic: str
    messages: int = 0
    alerts: int = 0
    bytes: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    examples: deque = field(default_factory=lambda: deque(maxlen=20))  # (partition, offset, reason, detail)
    latest: deque = field(default_factory=lambda: deque(maxlen=10))
    lag: int | None = None
    started: float = field(default_factory=time.monotonic)
    seen: RecentIds = field(default_factory=RecentIds, repr=False)
    survey: str = "ztf"
    decode: Callable[[bytes | None], Decoded] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        from fink.survey import wire

        self.description = surveys.load(self.survey)
        self.decode = self.decode or wire.decoder(self.description)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def add(self, data: bytes | None, partition: int, offset: int) -> None:
        self.messages += 1
        self.bytes += len(data or b"")
        desc = self.description
        try:
            decoded = self.decode(data)
            candid = desc.alert_key(decoded.alert)
            if candid in self.seen:
                raise AlertDecodeError("duplicate", f"{desc.alert_id} {candid}")
        except AlertDecodeError as exc:
            self.rejected[exc.reason] += 1
            self.examples.append((partition, offset, exc.reason, exc.detail[:120]))
            return
        self.seen.add(candid)
        self.alerts += 1
        alert = decoded.alert
        band = surveys.get_path(alert, desc.band)
        value = surveys.get_path(alert, desc.photometry["value"])
        self.latest.append({"objectId": desc.object_key(alert), "candid": candid, "time": jd_to_iso(desc.jd(alert)),
                            "band": BANDS.get(band, str(band)),
                            "brightness": round(value, 3) if isinstance(value, float) else value,
                            "schema": decoded.schema_version, "offset": offset})

    def summary(self) -> dict[str, Any]:
        return {"topic": self.topic, "messages": self.messages, "alerts": self.alerts,
                "rejected": dict(sorted(self.rejected.items())), "bytes": self.bytes, "lag": self.lag,
                "seconds": round(self.seconds, 2), "messages_per_s": round(self.rate, 1)}

    def text(self) -> str:
        """A plain-text view: one status line, the rejections, the latest alerts."""
        lines = [f"{self.topic}: {self.messages} messages, {self.alerts} alerts, "
                 f"{sum(self.rejected.values())} rejected, {self.rate:.1f} msg/s, lag {self.lag}"]
        for reason, n in sorted(self.rejected.items()):
            lines.append(f"  rejected {reason:20s} {n}")
        for row in list(self.latest)[-5:]:
            lines.append(f"  {row['objectId']} {row['candid']} {row['time']} {row['band']} {row['brightness']}")
        return "\n".join(lines)


#: seconds a watch waits past ``idle`` for the first message of a topic that holds some (a slow first fetch)
NO_MESSAGE_GRACE = 30.0


def watch(bootstrap: str, topic: str, start: str | int = "earliest", max_messages: int = 0, idle: float = 10.0,
          duration: float = 0.0, on_update: Callable[[StreamStats], None] | None = None, every: float = 1.0,
          stop: Callable[[], bool] | None = None, survey: str = "ztf") -> StreamStats:
    """Consume ``topic`` from ``start`` (``earliest``, ``latest`` or an offset for every partition),
    decoding ``survey``'s messages (a shipped survey or a description file).

    Stops after ``max_messages`` (0: no limit), after ``idle`` seconds without a message
    (0: never) once a message was read or the topic holds nothing to read (a slow first fetch
    is waited for up to ``NO_MESSAGE_GRACE`` seconds more), after ``duration`` seconds (0: never), or when
    ``stop()`` returns True. ``on_update`` gets the stats every ``every`` seconds and at the end.
    """
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    consumer = Consumer(kafka.client_config(bootstrap, **{
        "group.id": f"fink-checkstream-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "fetch.message.max.bytes": 10 << 20, "max.partition.fetch.bytes": 10 << 20}))
    stats = StreamStats(topic, survey=survey)
    try:
        waited = time.monotonic()
        while True:  # a watch may start before the topic's first message: wait for it up to `idle`
            meta = consumer.list_topics(topic, timeout=30).topics[topic]
            if meta.error is None and meta.partitions:
                break
            if not idle or time.monotonic() - waited > idle:
                raise kafka.KafkaError(f"topic {topic!r} on {bootstrap}: {meta.error} (waited {idle:.0f} s)")
            time.sleep(0.5)
        first = {"earliest": OFFSET_BEGINNING, "latest": OFFSET_END}.get(start, start)
        parts = [TopicPartition(topic, p, int(first)) for p in sorted(meta.partitions)]
        consumer.assign(parts)
        last_msg = last_update = time.monotonic()
        while True:
            msg = consumer.poll(0.2)
            now = time.monotonic()
            if msg is not None and msg.error() is None:
                stats.add(msg.value(), msg.partition(), msg.offset())
                last_msg = now
            if now - last_update >= every:
                stats.lag = _lag(consumer, parts, stats.lag)
                if on_update is not None:
                    on_update(stats)
                last_update = now
            if max_messages and stats.messages >= max_messages:
                break
            if idle and now - last_msg >= idle and (
                    stats.messages or stats.lag == 0 or now - last_msg >= idle + NO_MESSAGE_GRACE):
                break  # before the first message only an empty topic (nothing to read) ends it
            if duration and stats.seconds >= duration:
                break
            if stop is not None and stop():
                break
        stats.lag = _lag(consumer, parts, stats.lag)
        if on_update is not None:
            on_update(stats)
    finally:
        consumer.close()
    return stats


def _lag(consumer, parts, last: int | None) -> int | None:
    """Messages published but not yet read, over all partitions; ``last`` while the broker cannot say
    (a leader moving at a broker restart, a request timing out under load)."""
    from confluent_kafka import OFFSET_END, KafkaException

    total = 0
    for tp, assigned in zip(consumer.position(parts), parts, strict=True):
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        except KafkaException as exc:
            if not kafka.transient(exc):
                raise
            return last
        if tp.offset >= 0:  # read up to there
            position = tp.offset
        elif assigned.offset >= 0:  # nothing read yet from an explicit offset (one deleted: from the end)
            position = assigned.offset if low <= assigned.offset <= high else high
        else:
            position = high if assigned.offset == OFFSET_END else low
        total += max(0, high - position)
    return total
