"""distribution's delivery thread, on an outbox written here and a stand-in publisher (no Spark, no broker)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fink import kafka
from fink.stages import distribution as dist


class Publisher:
    """Keeps what each batch sent, or fails every transaction."""

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


def sink(tmp_path, publisher):
    encs = [dist.Encoding(("candid",), '{"type": "record"}', (0, 1))]
    out = dist.Sink("127.0.0.1:1", ["bright", "faint"], encs, str(tmp_path / "ck"))
    out.publisher = publisher
    return out


def outbox(tmp_path, batch_id, rows):
    folder = tmp_path / "ck" / "outbox" / str(batch_id)
    folder.mkdir(parents=True)
    table = pa.table({"_k": pa.array([k for k, _ in rows], pa.int32()), "value": pa.array([v for _, v in rows])})
    pq.write_table(table, folder / "part-00000.parquet")
    (folder / "_SUCCESS").touch()
    return folder


def test_a_batch_handed_to_the_thread_is_sent_in_order_with_its_schema_key_then_its_outbox_deleted(tmp_path):
    pub = Publisher()
    out = sink(tmp_path, pub)
    folder = outbox(tmp_path, 3, [(0, b"a"), (1, b"b"), (0, b"c")])
    out._pending = out._pool.submit(out._deliver, 3, folder)
    out.flush()
    key = b'{"type": "record"}'
    assert pub.sent[3] == [("bright", key, b"a"), ("faint", key, b"b"), ("bright", key, b"c")]
    assert out.delivered == {3: {"bright": 2, "faint": 1}} and not folder.exists()


def test_a_failed_transaction_keeps_its_outbox_for_the_restart_and_is_raised_by_the_next_batch(tmp_path):
    out = sink(tmp_path, Publisher(fail=True))
    folder = outbox(tmp_path, 5, [(1, b"x")])
    out._pending = out._pool.submit(out._deliver, 5, folder)
    with pytest.raises(kafka.KafkaError, match="batch 5 not delivered"):
        out.flush()
    assert (folder / "_SUCCESS").exists() and 5 not in out.delivered
    out.flush()  # raised once: nothing pending any more


def test_the_restart_delivers_complete_outboxes_in_batch_order_and_drops_the_rest(tmp_path):
    pub = Publisher()
    pub.last = 6  # batch 6 went out before the crash (its outbox was not deleted yet)
    out = sink(tmp_path, pub)
    outbox(tmp_path, 6, [(0, b"old")])
    outbox(tmp_path, 10, [(0, b"ten")])
    outbox(tmp_path, 7, [(1, b"seven")])
    torn = tmp_path / "ck" / "outbox" / "11"  # Spark was writing it: no _SUCCESS
    torn.mkdir()
    (torn / "part-00000.parquet").write_bytes(b"torn")
    assert out.recover(spark=None) == [7, 10]
    assert [m[2] for b in sorted(pub.sent) for m in pub.sent[b]] == [b"seven", b"ten"]
    assert not any((tmp_path / "ck" / "outbox").iterdir())
