"""distribution's delivery thread, on outboxes written here and a stand-in publisher (no Spark, no broker)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fink.io import kafka
from fink.stages import distribution as dist
from fink.stages.topics import Encoding

KEY = '{"type": "record"}'


class Publisher:
    """Keeps what each batch sent, or fails every transaction while ``fail``."""

    def __init__(self, fail=False):
        self.fail, self.sent, self.last = fail, {}, None

    def delivered(self, batch_id):
        return self.last is not None and batch_id <= self.last

    def publish(self, batch_id, messages):
        messages = list(messages)
        if self.fail:
            raise kafka.KafkaError(f"delivery w: batch {batch_id} not delivered: broker gone")
        self.sent[batch_id], self.last = messages, batch_id
        counts = {}
        for topic, _, _ in messages:
            counts[topic] = counts.get(topic, 0) + 1
        return counts


def sink(tmp_path, publisher, topics=("bright", "faint")):
    encs = [Encoding(("candid",), KEY, tuple(range(len(topics))))]
    out = dist.Sink("127.0.0.1:1", list(topics), encs, str(tmp_path / "ck"))
    out.publisher = publisher
    return out


def outbox(tmp_path, out, batch_id, rows, sealed=True):
    """What Spark writes for a batch (topic index, value), sealed by ``out`` once complete."""
    folder = tmp_path / "ck" / "outbox" / str(batch_id)
    folder.mkdir(parents=True)
    table = pa.table({"_k": pa.array([k for k, _ in rows], pa.int32()), "value": pa.array([v for _, v in rows])})
    pq.write_table(table, folder / "part-00000.parquet")
    if sealed:
        out._seal(folder)
    return folder


def test_a_batch_handed_to_the_thread_is_sent_in_order_with_its_schema_key_then_its_outbox_deleted(tmp_path):
    pub = Publisher()
    out = sink(tmp_path, pub)
    folder = outbox(tmp_path, out, 3, [(0, b"a"), (1, b"b"), (0, b"c")])
    out._pool.submit(out._deliver, 3, folder)
    out.flush()
    key = KEY.encode()
    assert pub.sent[3] == [("bright", key, b"a"), ("faint", key, b"b"), ("bright", key, b"c")]
    assert out.delivered == {3: {"bright": 2, "faint": 1}} and not folder.exists()


def test_a_failed_transaction_fails_every_later_batch_until_the_query_runs_again_and_delivers_it(tmp_path):
    pub = Publisher(fail=True)
    out = sink(tmp_path, pub)
    folder = outbox(tmp_path, out, 5, [(1, b"x")])
    out._pool.submit(out._deliver, 5, folder)
    for _ in range(2):  # the next batch, then the run's reconcile: both fail
        with pytest.raises(kafka.KafkaError, match="batch 5 not delivered"):
            out.flush()
    assert folder.exists() and 5 not in out.delivered
    later = outbox(tmp_path, out, 6, [(0, b"y")])  # Spark's next batch was sealed before the failure showed
    pub.fail = False
    out._resume(spark=None)  # the query started again (a replay of batch 6 comes next)
    out.flush()
    assert [m[2] for b in sorted(pub.sent) for m in pub.sent[b]] == [b"x", b"y"] and pub.last == 6
    assert not folder.exists() and not later.exists()


def test_the_restart_delivers_sealed_outboxes_in_batch_order_to_the_topics_they_were_sealed_with(tmp_path):
    before = sink(tmp_path, Publisher())
    outbox(tmp_path, before, 6, [(0, b"old")])
    outbox(tmp_path, before, 10, [(0, b"ten")])
    outbox(tmp_path, before, 7, [(1, b"seven")])
    outbox(tmp_path, before, 11, [(0, b"torn")], sealed=False)  # Spark was writing it
    pub = Publisher()
    pub.last = 6  # batch 6 went out before the crash (its outbox was not deleted yet)
    after = sink(tmp_path, pub, topics=("faint",))  # a filter was removed before the restart
    assert after.recover(spark=None) == [7, 10]
    assert [(b, m[0], m[2]) for b in sorted(pub.sent) for m in pub.sent[b]] == [(7, "faint", b"seven"),
                                                                                 (10, "bright", b"ten")]
    assert not any((tmp_path / "ck" / "outbox").iterdir())
