"""The real broker and HBase, through the clients the stages use."""

import uuid

import pytest

from fink.io import kafka

pytestmark = pytest.mark.integration


def test_produce_then_consume_gives_back_the_same_bytes(kafka_bootstrap, topic):
    from confluent_kafka import Consumer

    kafka.ensure_topic(kafka_bootstrap, topic, partitions=2)
    values = [uuid.uuid4().bytes * (i + 1) for i in range(50)]
    keys = [f"k{i}".encode() for i in range(50)]
    assert kafka.produce(kafka_bootstrap, topic, values, keys=keys) == 50

    consumer = Consumer(kafka.client_config(kafka_bootstrap, **{"group.id": f"g-{topic}",
                                                              "auto.offset.reset": "earliest"}))
    consumer.subscribe([topic])
    got = {}
    try:
        for _ in range(200):
            msg = consumer.poll(1.0)
            if msg is None:
                if len(got) == 50:
                    break
                continue
            assert msg.error() is None
            got[msg.key()] = (msg.value(), msg.partition(), msg.offset())
    finally:
        consumer.close()
    assert {k: v[0] for k, v in got.items()} == dict(zip(keys, values, strict=True))
    # same key, same partition; offsets within a partition are dense from 0
    for p in {v[1] for v in got.values()}:
        offsets = sorted(v[2] for v in got.values() if v[1] == p)
        assert offsets == list(range(len(offsets)))


def test_ensure_topic_is_idempotent(kafka_bootstrap, topic):
    assert kafka.ensure_topic(kafka_bootstrap, topic) is True
    assert kafka.ensure_topic(kafka_bootstrap, topic) is False


def test_end_offsets_mark_where_new_messages_begin(kafka_bootstrap, topic):
    import json

    kafka.ensure_topic(kafka_bootstrap, topic, partitions=3)
    assert kafka.end_offsets(kafka_bootstrap, topic) == {0: 0, 1: 0, 2: 0}
    kafka.produce(kafka_bootstrap, topic, [b"a", b"b", b"c", b"d"], keys=[b"1", b"1", b"1", b"1"])
    offsets = kafka.end_offsets(kafka_bootstrap, topic)
    assert sorted(offsets.values()) == [0, 0, 4]  # one key, one partition
    assert json.loads(kafka.starting_offsets_json(topic, offsets)) == {topic: {str(p): o for p, o in offsets.items()}}


def test_temporary_topics_go_by_name_and_spare_what_another_process_made(kafka_bootstrap):
    """Before, every topic made while the block ran was deleted, another process's too (a
    test session beside a demo on the same broker deleted the demo's topics)."""
    import subprocess
    import sys

    from confluent_kafka.admin import AdminClient, NewTopic

    mine, child, other = (f"tmp_{k}_{uuid.uuid4().hex[:8]}" for k in ("mine", "child", "other"))
    with kafka.temporary_topics(kafka_bootstrap):
        kafka.ensure_topic(kafka_bootstrap, mine)
        subprocess.run([sys.executable, "-c", f"from fink.io import kafka; kafka.ensure_topic({kafka_bootstrap!r}, "
                                              f"{child!r})"], check=True)  # inherits the list
        admin = AdminClient(kafka.client_config(kafka_bootstrap))  # as another program would
        admin.create_topics([NewTopic(other, num_partitions=1, replication_factor=1)])[other].result(30)
    left = kafka.topics(kafka_bootstrap)
    assert mine not in left and child not in left and other in left
    kafka.delete_topics(kafka_bootstrap, {other})


def test_unreachable_broker_is_a_clear_error(topic):
    with pytest.raises(kafka.KafkaError, match="not delivered"):
        kafka.produce("127.0.0.1:1", topic, [b"x"], timeout=2, **{"message.timeout.ms": 1500})


def test_happybase_creates_writes_and_scans_through_thrift(hbase_thrift):
    import happybase

    host, port = hbase_thrift
    name = f"test_{uuid.uuid4().hex[:10]}"
    conn = happybase.Connection(host, port=port, timeout=30000)
    try:
        conn.create_table(name, {"i": {"max_versions": 1}, "d": {}})
        assert name.encode() in conn.tables()
        table = conn.table(name)
        rows = {f"ZTF26aa{i:05d}_{2461371 + i}".encode(): {b"i:objectId": f"ZTF26aa{i:05d}".encode(),
                                                          b"d:magpsf": str(18.0 + i / 10).encode()}
                for i in range(20)}
        with table.batch(batch_size=7) as batch:
            for key, data in rows.items():
                batch.put(key, data)
        assert dict(table.scan()) == rows
        prefix = b"ZTF26aa0001"
        assert sorted(k for k, _ in table.scan(row_prefix=prefix)) == sorted(k for k in rows if k.startswith(prefix))
        assert table.row(b"ZTF26aa00003_2461374", columns=[b"d:magpsf"]) == {b"d:magpsf": b"18.3"}
    finally:
        if name.encode() in conn.tables():
            conn.delete_table(name, disable=True)
        conn.close()
