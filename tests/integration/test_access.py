"""What access control protects, on the real broker: the internal listeners, grants, consumer
groups, and the user's client committing only what it handed over."""

import io
import json
import socket
import struct
import time
import uuid

import pytest

from fink.config import ServicesConfig
from fink.io import access, kafka
from fink.io.delivery import LOG_TOPIC

pytestmark = pytest.mark.integration


def describe_cluster(host: str, port: int, timeout: float = 10.0) -> bytes | None:
    """Send one DescribeCluster request (v1, controller endpoints) on a fresh connection without
    authenticating; return the response, or None if the listener closed the connection instead."""
    client = b"probe"
    header = struct.pack(">hhih", 60, 1, 7, len(client)) + client + b"\x00"
    request = header + b"\x00\x02\x00"  # no authorized operations, endpoint type 2 (controller), no tags
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        data = b""
        try:
            while len(data) < 4 or len(data) < 4 + struct.unpack(">i", data[:4])[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
        except (ConnectionResetError, TimeoutError):
            return None
    return data


def test_an_unauthenticated_local_client_can_write_nothing_on_the_internal_listeners(kafka_bootstrap, topic):
    from confluent_kafka import Producer

    services = ServicesConfig.load()
    kafka.ensure_topic(kafka_bootstrap, topic)
    kafka.ensure_topic(kafka_bootstrap, LOG_TOPIC, config={"cleanup.policy": "compact"})  # as delivery makes it
    before = {t: kafka.end_offsets(kafka_bootstrap, t) for t in (LOG_TOPIC, topic)}
    failures = []
    forger = Producer({"bootstrap.servers": services.kafka_bootstrap, "message.timeout.ms": 5000,
                       "socket.timeout.ms": 3000, "log_level": 0})
    for t in (LOG_TOPIC, topic):  # a forged "batch delivered" record would make distribution skip it
        forger.produce(t, key=b"distribution-writer", value=json.dumps({"batch": 10**9}).encode(),
                       on_delivery=lambda err, msg: failures.append(err))
    forger.flush(15)
    assert len(failures) == 2 and all(err is not None for err in failures), failures
    assert {t: kafka.end_offsets(kafka_bootstrap, t) for t in before} == before
    # the controller listener answers nothing either (it used to describe the cluster to anyone)
    assert describe_cluster(services.host, services.kafka_controller_port) is None
    # the stages' own clients (the service account) still write
    assert kafka.produce(kafka_bootstrap, topic, [b"ok"]) == 1


@pytest.fixture
def user(kafka_bootstrap):
    name = f"u{uuid.uuid4().hex[:8]}"
    password = access.add_user(kafka_bootstrap, name).read_text().strip()
    yield name, password
    access.remove_user(kafka_bootstrap, name)


def distribution_topic(bootstrap: str, name: str) -> str:
    """A topic as distribution makes it: with its ``_schema`` topic, and one message."""
    kafka.ensure_topic(bootstrap, name)
    kafka.ensure_topic(bootstrap, f"{name}_schema", config={"cleanup.policy": "compact"})
    kafka.produce(bootstrap, name, [b"alert"])
    return name


def test_grant_refuses_every_topic_and_the_internal_ones(kafka_bootstrap, user):
    name, _ = user
    sfx = uuid.uuid4().hex[:6]
    survey = f"ztf_{sfx}"  # a topic of the broker, but no distribution topic: no _schema companion
    kafka.ensure_topic(kafka_bootstrap, survey)
    granted = distribution_topic(kafka_bootstrap, f"dist_{sfx}")
    for topic in ("*", "__consumer_offsets", "__transaction_state", LOG_TOPIC, f"{granted}_schema", survey,
                  f"absent_{sfx}"):
        with pytest.raises(access.AccessError, match="not a distribution topic"):
            access.grant(kafka_bootstrap, name, topic)
    assert access.grants(kafka_bootstrap)[name] == []
    access.grant(kafka_bootstrap, name, granted)
    assert access.grants(kafka_bootstrap)[name] == [granted]


def read_as(user: str, password: str, topic: str, group: str) -> tuple[int, str]:
    """Messages a user's consumer reads from ``topic`` in ``group``, and the errors it met."""
    from confluent_kafka import Consumer

    services = ServicesConfig.load()
    errors = []
    consumer = Consumer({"bootstrap.servers": services.kafka_users_bootstrap, "security.protocol": "SASL_PLAINTEXT",
                         "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": user, "sasl.password": password,
                         "group.id": group, "auto.offset.reset": "earliest", "error_cb": errors.append})
    consumer.subscribe([topic])
    n, deadline = 0, time.monotonic() + 30
    try:
        while time.monotonic() < deadline and not errors and not n:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error():
                errors.append(msg.error())
            elif msg is not None:
                n += 1
    finally:
        consumer.close()
    return n, " ".join(str(e) for e in errors)


def test_a_users_consumer_groups_are_those_named_user_dash_something(kafka_bootstrap, user):
    name, password = user
    topic = distribution_topic(kafka_bootstrap, f"groups_{uuid.uuid4().hex[:6]}")
    access.grant(kafka_bootstrap, name, topic)
    assert read_as(name, password, topic, f"{name}-scan") == (1, "")
    n, errors = read_as(name, password, topic, f"{name}x")  # another user may be called "<name>x"
    assert n == 0 and "AUTHORIZATION" in errors.upper(), errors
    n, errors = read_as(name, password, topic, name)
    assert n == 0 and "AUTHORIZATION" in errors.upper(), errors


SCHEMA = {"type": "record", "name": "alert", "fields": [{"name": "i", "type": "int"}]}


def alert_bytes(i: int) -> bytes:
    import fastavro

    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(SCHEMA), {"i": i})
    return out.getvalue()


def test_the_client_commits_an_alert_once_handed_over_and_never_one_it_did_not_hand_over(kafka_bootstrap, topic):
    from fink.client import AlertStream
    from fink.client.consumer import ClientError

    kafka.ensure_topic(kafka_bootstrap, topic)
    key = json.dumps(SCHEMA).encode()
    # alerts 0-4, then a message that is no alert (no schema key), then alerts 6-9
    values = [alert_bytes(i) for i in range(10)]
    keys = [key] * 10
    keys[5] = None
    kafka.produce(kafka_bootstrap, topic, values, keys=keys)
    group = f"check-{uuid.uuid4().hex[:6]}"

    def stream():
        return AlertStream(topic, group_id=group)

    with stream() as s:  # the caller stops after alert 2
        assert [a["i"] for _, a in s.alerts(limit=3, idle=20)] == [0, 1, 2]
    with stream() as s:  # it resumes at alert 3, then meets the message it cannot decode
        assert [a["i"] for _, a in s.alerts(limit=2, idle=20)] == [3, 4]
        with pytest.raises(ClientError, match="schema key"):
            s.poll(20)
    with stream() as s:  # that message was received but never handed over: it is not skipped
        with pytest.raises(ClientError, match="schema key"):
            s.poll(30)
