"""stream2raw on the real broker: decoded like fastavro, quarantined with reasons, exactly once."""

import io
import math
from pathlib import Path

import fastavro
import pytest
from pyspark.sql import functions as F

from fink.config import FinkConfig
from fink.io import filestore, kafka
from fink.runtime import streaming
from fink.sim import faults
from fink.sim.simulator import SimulatorConfig, load_messages, replay
from fink.stages import decoding, raw_archive
from fink.stages import stream2raw as s2r

pytestmark = [pytest.mark.integration, pytest.mark.spark]
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = str(ROOT / "datasim" / "sample_night")

# real ZTF packets per schema version, as ZTF wrote them
NATIVE = {"3.1": ["fink-broker_v0.2.0_datasim", "fink-alert-schemas_ztf"], "3.2": ["ztf-avro-alert_data"],
          "3.3": ["fink-broker_basic_alerts_local", "ztf-avro-alert_data"],
          "4.02": ["native-4.02_kowalski-2023-10-12", "native-4.02_fink-client-2026-03"]}


def run(spark, bootstrap, topic, tmp, trigger="availableNow", max_offsets=100, duration=240.0, stop_after=None):
    fink = FinkConfig(kafka_bootstrap=bootstrap, data_dir=str(tmp))
    cfg = s2r.Stream2RawConfig(topic=topic, max_offsets_per_trigger=max_offsets)
    writer = s2r.build(spark, cfg, fink)
    writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)
    query = streaming.start(writer, s2r.QUERY_NAME)

    def stop_early(queries):
        if stop_after is not None and len(queries[0].recentProgress) >= stop_after:
            streaming.stop_at_boundary(queries[0])  # not between a batch's files and its offsets

    result = streaming.run_until([query], duration=duration, poll=0.5, on_poll=stop_early)
    return cfg.paths(fink), s2r.reconcile(spark, result.progress[s2r.QUERY_NAME], cfg.paths(fink)["raw"])


def same(got, want, path):
    if isinstance(want, float):
        assert got is not None and math.isclose(got, want, rel_tol=1e-6), path
    elif isinstance(want, dict):
        for key, value in want.items():
            same(got[key], value, f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same(g, w, f"{path}[{i}]")
    elif isinstance(want, bytes):
        assert bytes(got) == want, path
    else:
        assert got == want, path


def test_build_returns_an_unstarted_writer(fresh_spark, kafka_bootstrap, topic, tmp_path):
    from pyspark.sql.streaming import DataStreamWriter

    writer = s2r.build(fresh_spark, s2r.Stream2RawConfig(topic=topic), FinkConfig(data_dir=str(tmp_path)))
    assert isinstance(writer, DataStreamWriter) and not fresh_spark.streams.active


def test_every_schema_version_is_archived_as_fastavro_decodes_it(fresh_spark, kafka_bootstrap, topic, tmp_path,
                                                                  shared_datasim):
    expected = {}
    for version, folders in NATIVE.items():
        for folder in folders:
            for path in sorted((shared_datasim / "ztf" / folder).glob("*.avro")):
                data = path.read_bytes()
                reader = fastavro.reader(io.BytesIO(data))
                if reader.writer_schema.get("version") != version:
                    continue
                record = next(reader)
                expected[record["candid"]] = (version, record, data)
    assert {v for v, _, _ in expected.values()} == set(NATIVE)
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=[d for _, _, d in expected.values()],
           progress=False)
    paths, totals = run(fresh_spark, kafka_bootstrap, topic, tmp_path)
    assert totals["balanced"] and totals["archived"] == len(expected) and totals["quarantined"] == 0
    rows = s2r.read_raw(fresh_spark, paths["raw"]).collect()
    assert len(rows) == len(expected)
    for row in rows:
        got = row.asDict(recursive=True)
        version, record, _ = expected[got["candid"]]
        assert got["schema_version"] == version
        same(got, record, got["objectId"])
        if version.startswith("3."):
            assert got["fp_hists"] is None  # a field the version lacks is null
        assert got["kafka_topic"] == topic and got["kafka_offset"] >= 0
        assert got["brokerIngestTimestamp"] is not None and got["kafka_timestamp"] is not None


def test_malformed_messages_go_to_quarantine_and_alerts_keep_flowing(fresh_spark, kafka_bootstrap, topic, tmp_path):
    messages = load_messages(SimulatorConfig(source=SAMPLE))
    report = replay(SimulatorConfig(topic=topic, faults={k: 0.03 for k in faults.KINDS}), kafka_bootstrap,
                    messages=messages, progress=False, fault_seed=11)
    assert set(report["faults"]) == set(faults.KINDS)
    paths, totals = run(fresh_spark, kafka_bootstrap, topic, tmp_path, max_offsets=80)
    assert totals["messages"] == report["messages"] and totals["balanced"]
    assert totals["archived"] == report["alerts"] == 229
    assert totals["reasons"] == {faults.KINDS[k]: n for k, n in report["faults"].items()}
    quarantine = fresh_spark.read.parquet(paths["quarantine"])
    assert {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()} == totals["reasons"]
    sent = set(messages)
    for row in quarantine.collect():
        raw = bytes(row["raw"])
        if row["reason"] == "duplicate":
            assert raw in sent
        elif row["reason"] == "truncated":
            assert any(m.startswith(raw) for m in sent)
        elif row["reason"] == "empty":
            assert raw == b""
    raw_rows = s2r.read_raw(fresh_spark, paths["raw"])
    assert raw_rows.select("candid").distinct().count() == 229


def test_an_alert_id_outside_the_surveys_range_is_set_aside_and_the_others_archived(fresh_spark, kafka_bootstrap,
                                                                                     topic, tmp_path):
    """One alert re-encoded with candid = -7 among 20 good ones (before the fix: archived, then
    the archive stage stopped on it at every restart)."""
    good = load_messages(SimulatorConfig(source=SAMPLE))[:21]
    reader = fastavro.reader(io.BytesIO(good[0]))
    (record,) = list(reader)
    record["candid"] = record["candidate"]["candid"] = -7
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(reader.writer_schema), [record], codec=reader.codec)
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=[buf.getvalue(), *good[1:]], progress=False)
    paths, totals = run(fresh_spark, kafka_bootstrap, topic, tmp_path)
    assert totals["balanced"] and totals["messages"] == 21 and totals["archived"] == 20
    assert totals["reasons"] == {"bad_identifier": 1}
    (row,) = fresh_spark.read.parquet(paths["quarantine"]).collect()
    assert row["reason"] == "bad_identifier" and bytes(row["raw"]) == buf.getvalue()
    assert -7 not in {r.candid for r in s2r.read_raw(fresh_spark, paths["raw"]).select("candid").collect()}


@pytest.mark.timeout(900)
def test_set_aside_messages_reach_the_quarantine_whole_without_passing_through_the_driver(
        fresh_spark, kafka_bootstrap, topic, tmp_path, monkeypatch):
    """40 junk messages of 900 KB and the night replayed 3 times, in one batch: every message
    accounted for, each quarantined with its bytes, read again by the executors (before, the
    driver fetched them: at the issue's sizes, 3,000 junk messages of 900 KB, it ran the
    default 2 GB heap out of memory; `benchmarks/bench_quarantine.py` runs those sizes)."""
    import numpy as np

    from fink.io import kafka

    rng = np.random.default_rng(3)
    junk = [b"Z" + rng.bytes(900_000 - 1) for _ in range(40)]
    night = load_messages(SimulatorConfig(source=SAMPLE))
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=junk + night * 3, progress=False)

    def driver_fetch(*args, **kwargs):
        raise AssertionError("the driver fetched message bytes")

    monkeypatch.setattr(kafka, "fetch", driver_fetch)
    paths, totals = run(fresh_spark, kafka_bootstrap, topic, tmp_path, max_offsets=5000)
    assert totals["balanced"] and totals["messages"] == 40 + 3 * 229 and totals["archived"] == 229
    assert totals["reasons"] == {"not_avro": 40, "duplicate": 2 * 229}
    quarantine = fresh_spark.read.parquet(paths["quarantine"])
    sizes = {r["reason"]: (r["n"], r["bytes"]) for r in quarantine.groupBy("reason").agg(
        F.count("*").alias("n"), F.sum(F.length("raw")).alias("bytes")).collect()}
    assert sizes["not_avro"] == (40, 40 * 900_000)
    assert sizes["duplicate"] == (2 * 229, 2 * sum(len(m) for m in night))
    kept = {bytes(r.raw) for r in quarantine.where("reason = 'not_avro'").select("raw").collect()}
    assert kept == set(junk)  # the very bytes, not only their sizes


def test_a_set_aside_message_gone_from_kafka_is_quarantined_without_its_bytes(fresh_spark, tmp_path):
    """The executors' read finds what Kafka still holds; what retention took meanwhile is
    still quarantined (its place and reason, no bytes), never dropped from the count."""
    import datetime as dt

    import pandas as pd

    now = dt.datetime(2026, 12, 4, 1, 0, 0)
    set_aside = pd.DataFrame({"topic": ["t", "t"], "partition": [0, 0], "offset": [5, 9],
                              "timestamp": [now, now], "reason": ["not_avro", "duplicate"],
                              "brokerIngestTimestamp": [now, now]})
    found = fresh_spark.createDataFrame(set_aside.iloc[:1].assign(value=[b"junk"]),
                                        "topic string, partition int, offset long, timestamp timestamp, "
                                        "reason string, brokerIngestTimestamp timestamp, value binary")
    root = str(tmp_path / "quarantine")
    staged = filestore.stage(raw_archive.quarantine_columns(found), root, "k-0", "ingest_night", 1)
    staged = raw_archive._stage_missing(fresh_spark, root, "k-0", staged, set_aside)
    filestore.publish(fresh_spark, root, "k-0", staged)
    rows = {r.offset: (r.reason, r.raw) for r in fresh_spark.read.parquet(root).collect()}
    assert rows == {5: ("not_avro", bytearray(b"junk")), 9: ("duplicate", None)}


def test_offsets_gone_from_kafka_before_they_were_read_are_counted_as_lost(fresh_spark, kafka_bootstrap, topic,
                                                                           tmp_path):
    """Records deleted (as retention does) between two batches: Spark skips them
    (failOnDataLoss false); before the fix the run balanced without a word of them."""
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=load_messages(SimulatorConfig(source=SAMPLE)),
           progress=False)
    _, first = run(fresh_spark, kafka_bootstrap, topic, tmp_path, max_offsets=60, stop_after=1)
    assert first["lost"] == 0 and 60 <= first["messages"] < 229
    done = first["messages"]
    admin = AdminClient(kafka.client_config(kafka_bootstrap))
    for future in admin.delete_records([TopicPartition(topic, 0, 150)]).values():
        future.result(30)
    _, second = run(fresh_spark, kafka_bootstrap, topic, tmp_path, max_offsets=60)  # the same checkpoint
    assert second["lost"] == 150 - done and second["messages"] == 229 - 150
    assert second["balanced"] and second["archived"] == 229 - 150
    assert [(r["topic"], r["partition"]) for r in second["lost_ranges"]] == [(topic, 0)] * len(second["lost_ranges"])
    assert min(r["from"] for r in second["lost_ranges"]) == done and max(r["to"] for r in second["lost_ranges"]) == 150


def test_stop_midstream_then_restart_loses_and_doubles_nothing(fresh_spark, kafka_bootstrap, topic, tmp_path):
    messages = load_messages(SimulatorConfig(source=SAMPLE))
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=messages, progress=False)
    paths, first = run(fresh_spark, kafka_bootstrap, topic, tmp_path, trigger="1 second", max_offsets=40,
                       stop_after=2)
    partial = s2r.read_raw(fresh_spark, paths["raw"]).count()
    assert 0 < partial < 229
    _, second = run(fresh_spark, kafka_bootstrap, topic, tmp_path, max_offsets=40)
    raw = s2r.read_raw(fresh_spark, paths["raw"])
    assert raw.count() == raw.select("candid").distinct().count() == 229
    assert first["archived"] + second["archived"] == 229 and second["quarantined"] == 0


def test_a_run_that_read_nothing_while_its_source_held_messages_says_so(fresh_spark, kafka_bootstrap, topic,
                                                                         tmp_path):
    """Before, a run that read nothing (a dead query, a checkpoint past the data) reported
    ``balanced`` over zero messages."""
    night = load_messages(SimulatorConfig(source=SAMPLE))
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=night[:50], progress=False)
    fink = FinkConfig(kafka_bootstrap=kafka_bootstrap, data_dir=str(tmp_path))
    cfg = s2r.Stream2RawConfig(topic=topic)
    paths = cfg.paths(fink)
    assert s2r.unread(fresh_spark, cfg, kafka_bootstrap, paths["checkpoint"]) == 50  # never run: all of it
    nothing = s2r.reconcile(fresh_spark, [], paths["raw"], unread=50)
    assert not nothing["balanced"] and nothing["problem"] == "read nothing while its source holds 50 unread messages"
    _, totals = run(fresh_spark, kafka_bootstrap, topic, tmp_path)
    assert totals["archived"] == 50 and totals["balanced"]
    assert s2r.unread(fresh_spark, cfg, kafka_bootstrap, paths["checkpoint"]) == 0
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=night[50:70], progress=False)
    assert s2r.unread(fresh_spark, cfg, kafka_bootstrap, paths["checkpoint"]) == 20


def test_a_replayed_batch_replaces_its_own_files(fresh_spark, tmp_path):
    df = fresh_spark.range(10).selectExpr("id", "'20261127' as night")
    root = str(tmp_path / "table")
    filestore.write_batch(df, root, 7, "night")  # an attempt that crashed before its commit
    filestore.write_batch(df, root, 7, "night")  # Spark re-runs the batch
    assert fresh_spark.read.parquet(root).count() == 10
    filestore.commit(fresh_spark, root, 7, {"rows": 10})
    assert filestore.committed(fresh_spark, root, 7)["rows"] == 10


def test_commit_records_are_whole_or_absent(fresh_spark, tmp_path):
    """A commit record is replaced in one rename (no reader sees a part of it), and one cut
    short (a crash of a writer that wrote in place) counts as not committed, not as a crash."""
    root = tmp_path / "table"
    key = filestore.batch_key("0123456789abcdef", 3)
    filestore.commit(fresh_spark, str(root), key, {"rows": 10})
    filestore.commit(fresh_spark, str(root), key, {"rows": 11})  # over the first one
    assert filestore.committed(fresh_spark, str(root), key)["rows"] == 11
    assert [p.name for p in (root / "_commits").iterdir() if not p.name.startswith(".")] == [f"{key}.json"]
    (root / "_commits" / f"{key}.json").write_text('{"batch": "0123456')  # cut short
    assert filestore.committed(fresh_spark, str(root), key) is None
    assert filestore.begin(fresh_spark, str(root), key) is None  # written again


def test_compaction_keeps_every_row_in_fewer_files(fresh_spark, kafka_bootstrap, topic, tmp_path):
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=load_messages(SimulatorConfig(source=SAMPLE)),
           progress=False)
    paths, _ = run(fresh_spark, kafka_bootstrap, topic, tmp_path, max_offsets=30)
    before = fresh_spark.read.parquet(paths["raw"]).select("candid").collect()
    report = filestore.compact(fresh_spark, paths["raw"], "night=20261127")
    assert report["files_before"] >= 8 and report["files_after"] == 1 and report["rows"] == 229
    after = fresh_spark.read.parquet(paths["raw"])
    assert sorted(r.candid for r in after.select("candid").collect()) == sorted(r.candid for r in before)
    assert [r.night for r in after.select("night").distinct().collect()] == [20261127]


def test_an_older_version_is_laid_out_as_the_union_with_its_types_and_nulls(spark):
    """The layout of one version in the union (``_align``): fields in the union's order, the
    missing ones null with the union's type and nullability, numbers widened, arrays of
    records (and of arrays of records) laid out element by element, a null record null."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import (
        ArrayType,
        DoubleType,
        FloatType,
        IntegerType,
        LongType,
        StringType,
        StructField,
        StructType,
        TimestampType,
    )

    old_item = StructType([StructField("b", IntegerType(), False)])
    new_item = StructType([StructField("b", LongType(), False), StructField("c", StringType(), True)])
    sub_old = StructType([StructField("x", FloatType(), True)])
    sub_new = StructType([StructField("x", DoubleType(), True), StructField("t", TimestampType(), True),
                          StructField("n", IntegerType(), False)])
    old = StructType([StructField("id", IntegerType(), False), StructField("items", ArrayType(old_item), True),
                      StructField("nested", ArrayType(ArrayType(old_item)), True), StructField("sub", sub_old, True)])
    new = StructType([StructField("id", LongType(), False), StructField("weird`name's", sub_new, True),
                      StructField("items", ArrayType(new_item), True),
                      StructField("nested", ArrayType(ArrayType(new_item)), True), StructField("sub", sub_new, True)])
    rows = [(1, [(2,), (3,)], [[(4,)], []], (1.5,)), (2, None, None, None)]
    df = spark.createDataFrame(rows, old).select(F.struct("*").alias("_v1"))
    aligned = df.select(F.expr(decoding._align("`_v1`", df.schema["_v1"].dataType, new)).alias("a"))
    got = aligned.schema["a"].dataType
    assert got.fieldNames() == new.fieldNames()
    assert got["weird`name's"].dataType == sub_new  # a missing record keeps its fields' nullability

    def fields(struct):  # (a field of an array's element is nullable: the element may be null)
        return [(f.name, f.dataType) for f in struct.fields]

    assert fields(got["items"].dataType.elementType) == fields(new_item)
    assert fields(got["nested"].dataType.elementType.elementType) == fields(new_item)
    assert got["sub"].dataType["x"].dataType == DoubleType()
    first, second = [r["a"].asDict(recursive=True) for r in aligned.collect()]
    assert first == {"id": 1, "weird`name's": None, "items": [{"b": 2, "c": None}, {"b": 3, "c": None}],
                     "nested": [[{"b": 4, "c": None}], []], "sub": {"x": 1.5, "t": None, "n": None}}
    assert second == {"id": 2, "weird`name's": None, "items": None, "nested": None, "sub": None}


def test_a_new_checkpoint_writing_into_an_old_archive_takes_none_of_its_batches(fresh_spark, kafka_bootstrap,
                                                                                 tmp_path):
    """A new query (its checkpoint deleted, or the one-pass pipeline after the stage service)
    numbers its batches from 0 again: its batch 0 is not the old batch 0, nothing is skipped."""
    import shutil
    import uuid

    from test_operations import candids

    night = load_messages(SimulatorConfig(source=SAMPLE, topic="-"))
    first, second = f"ckpt_a_{uuid.uuid4().hex[:6]}", f"ckpt_b_{uuid.uuid4().hex[:6]}"
    replay(SimulatorConfig(topic=first), kafka_bootstrap, messages=night[:51], progress=False)
    paths, before = run(fresh_spark, kafka_bootstrap, first, tmp_path)
    assert before["archived"] == 51 and before["balanced"]
    shutil.rmtree(paths["checkpoint"])  # a new query from here on
    replay(SimulatorConfig(topic=second), kafka_bootstrap, messages=night[51:172], progress=False)
    _, after = run(fresh_spark, kafka_bootstrap, second, tmp_path)
    assert after["messages"] == after["archived"] == 121 and after["balanced"]
    raw = candids(tmp_path / "raw")
    assert len(raw) == len(set(raw)) == 172
