"""Read alerts from distribution topics, as dicts or pandas DataFrames.

Each message is an alert as schemaless Avro with the JSON of its schema as key (the Fink
community client's format), so any Avro reader decodes it; this consumer parses each
distinct schema once.

Credentials: a user connects to the broker's SASL listener with SCRAM-SHA-512. The password
is never an argument: it is read from ``$FINK_CLIENT_PASSWORD`` or from a file readable by
its owner only (by default the operator's copy, ``$FINK_HOME/secrets/users/<user>``).

Offsets: an alert counts as read once :meth:`AlertStream.poll` returns it. Its offset is
stored then, and committed by the consumer in the background and at :meth:`AlertStream.close`;
a message received but not handed over (it failed to decode, or the broker's refusal was
raised first) is read again by the next stream of the group, never skipped.
"""

from __future__ import annotations

import io
import json
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fink.errors import FinkError
from fink.io import kafka
from fink.survey.avro import ALERT_ID_HEADER


class ClientError(FinkError, RuntimeError):
    """The broker refused the connection or a topic, or a message could not be decoded."""


_SCHEMAS: dict[bytes, Any] = {}
#: seconds :meth:`AlertStream.alerts` waits, beyond ``idle``, for the group to give it partitions
JOIN_GRACE = 30.0


def decode(key: bytes | None, value: bytes) -> dict[str, Any]:
    """One distributed message to its alert (``key``: the JSON Avro schema of ``value``)."""
    import fastavro

    if not key:
        raise ClientError("message without a schema key: not a distribution topic of this broker")
    parsed = _SCHEMAS.get(key)
    if parsed is None:
        parsed = _SCHEMAS[key] = fastavro.parse_schema(json.loads(key))
    return fastavro.schemaless_reader(io.BytesIO(value), parsed)


def read_password(user: str, password_file: str | os.PathLike[str] | None = None) -> str:
    """The user's password from ``$FINK_CLIENT_PASSWORD``, else from a 0600 file."""
    from fink.io.access import password_file as operator_copy

    env = os.environ.get("FINK_CLIENT_PASSWORD")
    if env:
        return env
    path = Path(password_file) if password_file else operator_copy(user)
    if not path.exists():
        raise ClientError(f"no password for user {user!r}: set FINK_CLIENT_PASSWORD or give password_file "
                          f"(looked for {path})")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ClientError(f"{path}: password file has mode {mode:o}; run `chmod 600 {path}`")
    return path.read_text().strip()


class AlertStream:
    """Alerts of one or more distribution topics.

    Parameters
    ----------
    topics
        Topic names.
    group_id
        The consumer group: its committed offsets say where a new stream resumes (after the
        last alert handed over). A user's groups must start with ``<user>-``.
    user, password_file
        Connect as ``user`` on the SASL listener (see the module notes for the password);
        without ``user``, plaintext on the internal listener (the operator's own use).
    bootstrap
        Default: the local broker's SASL listener with ``user``, its internal one without.
    offsets
        Where a group without committed offsets starts: ``earliest`` or ``latest``.
    dedup
        Drop a message whose alert id (its ``alert_id`` header) was already given: the topics
        of the real-time lane are at least once, and may repeat an alert after a restart.
        ``repeats`` counts those dropped. Messages without the header are all given.
    """

    #: alert ids remembered for ``dedup`` (the oldest are forgotten past this many)
    REMEMBER = 1_000_000

    def __init__(self, topics: Sequence[str] | str, group_id: str, user: str | None = None,
                 password_file: str | os.PathLike[str] | None = None, bootstrap: str | None = None,
                 offsets: str = "earliest", dedup: bool = True):
        from confluent_kafka import Consumer

        from fink.config import ServicesConfig

        self.topics = [topics] if isinstance(topics, str) else list(topics)
        services = ServicesConfig.load()
        # offsets stored by poll() once it hands an alert over (librdkafka would store them as it
        # receives messages), committed in the background and at close()
        conf: dict[str, Any] = {"group.id": group_id, "auto.offset.reset": offsets, "enable.auto.commit": True,
                                "enable.auto.offset.store": False, "isolation.level": "read_committed",
                                "error_cb": self._on_error}
        if user:
            if not group_id.startswith(f"{user}-"):
                raise ClientError(f"group {group_id!r}: {user}'s consumer groups must start with '{user}-'")
            conf = kafka.sasl_config(bootstrap or services.kafka_users_bootstrap, user,
                                     read_password(user, password_file), **conf)
        else:  # the operator, on the internal listener, as the service account
            conf = kafka.client_config(bootstrap or services.kafka_bootstrap, **conf)
        self._errors: list[str] = []
        self._seen: OrderedDict[tuple[bytes, bytes], None] | None = OrderedDict() if dedup else None
        self.repeats = 0
        self._keys: dict[str, bytes] = {}  # topic -> the schema key of its last message
        self._consumer = Consumer(conf)
        self._assigned: float | None = None  # when the group last gave us partitions
        self._consumer.subscribe(self.topics, on_assign=self._on_assign)

    def _on_assign(self, consumer, partitions) -> None:
        self._assigned = time.monotonic()

    def _on_error(self, err) -> None:
        self._errors.append(str(err))

    def _raise_refusals(self) -> None:
        fatal = [e for e in self._errors if "AUTHENTICATION" in e.upper() or "AUTHORIZATION" in e.upper()]
        if fatal:
            raise ClientError(f"topics {self.topics}: refused by the broker: {fatal[-1]}")

    def poll(self, timeout: float = 1.0) -> tuple[str, dict[str, Any]] | None:
        """The next alert as ``(topic, alert)``, or None if none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self._consumer.poll(max(0.0, deadline - time.monotonic()))
            self._raise_refusals()
            if msg is None:
                return None
            if msg.error():
                raise ClientError(f"topics {self.topics}: {msg.error()}")
            if not self._repeated(msg):
                break
            self._consumer.store_offsets(message=msg)  # a repeat dropped on purpose is done with
        try:
            alert = decode(msg.key(), msg.value())
        except Exception as exc:  # not stored, and read again: neither this stream nor the group skips it
            from confluent_kafka import TopicPartition

            self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
            where = f"{msg.topic()}[{msg.partition()}] offset {msg.offset()}"
            raise ClientError(f"{where}: {exc} (not committed: the group reads it again)") from exc
        self._keys[msg.topic()] = msg.key()
        self._consumer.store_offsets(message=msg)
        return msg.topic(), alert

    def _repeated(self, msg) -> bool:
        """True if ``msg``'s alert id was given before (and ``dedup`` is on); else remember it."""
        if self._seen is None:
            return False
        ident = next((v for k, v in (msg.headers() or []) if k == ALERT_ID_HEADER), None)
        if ident is None:
            return False
        key = (msg.topic().encode(), ident)
        if key in self._seen:
            self.repeats += 1
            return True
        self._seen[key] = None
        if len(self._seen) > self.REMEMBER:
            self._seen.popitem(last=False)
        return False

    def schema(self, topic: str) -> dict[str, Any] | None:
        """The Avro schema of ``topic``'s last alert read (to save alerts as Avro), or None."""
        key = self._keys.get(topic)
        return json.loads(key) if key else None

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.alerts()

    def alerts(self, limit: int = 0, idle: float = 10.0) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(topic, alert)`` until ``limit`` alerts (0: no limit) or ``idle`` seconds without one.

        The idle seconds count once the group has given this stream its partitions (joining a
        group can take seconds), and at most ``JOIN_GRACE`` seconds more are waited for that.
        """
        n, start = 0, time.monotonic()
        last = start
        while not limit or n < limit:
            got = self.poll(max(0.1, min(1.0, idle)))
            if got is None:
                now = time.monotonic()
                since = max(last, self._assigned) if self._assigned is not None else start + JOIN_GRACE
                if now - since >= idle:
                    return
                continue
            n, last = n + 1, time.monotonic()
            yield got

    def to_pandas(self, limit: int = 0, idle: float = 10.0, columns: Sequence[str] | None = None):
        """The alerts as a DataFrame (one row per alert, nested fields as dicts; plus ``topic``)."""
        import pandas as pd

        rows = [{"topic": t, **({c: a.get(c) for c in columns} if columns else a)}
                for t, a in self.alerts(limit, idle)]
        return pd.DataFrame(rows)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> AlertStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
