"""Compaction while the stages run (issue 21, item 4): refused while a stage reads or writes
the table, invisible to the readers that had read the old files, read by a new one."""

import json
import os
import socket

import pytest
from test_stream2raw import SAMPLE, run

from fink.config import FinkConfig
from fink.io import filestore, table_use
from fink.runtime import streaming
from fink.sim.simulator import SimulatorConfig, load_messages, replay
from fink.stages import raw2science as r2s
from fink.stages import stream2raw as s2r

pytestmark = [pytest.mark.integration, pytest.mark.spark]

NIGHT = "night=20261127"


def science_query(spark, tmp, name="science", trigger="availableNow", max_files=0):
    fink = FinkConfig(data_dir=str(tmp))
    cfg = r2s.Raw2ScienceConfig(science_path=str(tmp / name), checkpoint=str(tmp / f"checkpoint-{name}"),
                                max_files_per_trigger=max_files)
    writer = r2s.build(spark, cfg, fink)
    writer = writer.trigger(availableNow=True) if trigger == "availableNow" else writer.trigger(processingTime=trigger)
    return cfg.paths(fink), streaming.start(writer, r2s.QUERY_NAME)


def finish(spark, paths, query, **options):
    result = streaming.run_until([query], poll=0.5, **options)
    return r2s.reconcile(spark, result.progress[r2s.QUERY_NAME], paths["science"])


def keys(spark, path):
    return sorted(r.candid for r in r2s.read_science(spark, path).select("candid").collect())


def test_compaction_is_refused_while_stages_run_and_invisible_to_them_after(fresh_spark, kafka_bootstrap, topic,
                                                                          tmp_path):
    spark = fresh_spark
    replay(SimulatorConfig(topic=topic), kafka_bootstrap, messages=load_messages(SimulatorConfig(source=SAMPLE)),
           progress=False)
    raw_paths, raw_totals = run(spark, kafka_bootstrap, topic, tmp_path, max_offsets=40)
    assert raw_totals["archived"] == 229
    files = len(filestore.FileStore(spark, raw_paths["raw"]).files(NIGHT))
    assert files >= 6

    # a reader that has read only part of the night: refused, whatever runs
    paths, query = science_query(spark, tmp_path, "partial", max_files=1)
    streaming.run_until([query], duration=0.1, poll=0.5)  # stopped after its first batch (or none)
    with pytest.raises(table_use.TableInUse, match=r"raw2science .*has not read \d+ of the \d+ files"):
        filestore.compact(spark, raw_paths["raw"], NIGHT)
    filestore.FileStore(spark, str(tmp_path)).delete("checkpoint-partial")  # that reader is gone

    # raw2science runs on (a processing-time trigger): refused, naming it
    paths, query = science_query(spark, tmp_path, trigger="1 second")
    try:
        while not query.recentProgress or not any(p["numInputRows"] for p in query.recentProgress):
            query.awaitTermination(0.5)
        with pytest.raises(table_use.TableInUse, match="while these queries use the table: raw2science .reads it"):
            filestore.compact(spark, raw_paths["raw"], NIGHT)
    finally:
        totals = finish(spark, paths, query, duration=30)  # until it has read every file, then stopped
    before = keys(spark, paths["science"])
    assert totals["alerts"] == 229 and len(before) == totals["written"] > 0

    report = filestore.compact(spark, raw_paths["raw"], NIGHT)
    assert report["files_before"] == files and report["files_after"] == 1 and report["readers_told"] == 1
    assert sorted(r.candid for r in s2r.read_raw(spark, raw_paths["raw"]).select("candid").collect()) \
        == sorted(r.candid for r in spark.read.parquet(raw_paths["raw"]).select("candid").collect())

    # the same reader again: the compacted file is not news to it
    paths, query = science_query(spark, tmp_path)
    again = finish(spark, paths, query, duration=120)
    assert again["alerts"] == 0 and keys(spark, paths["science"]) == before

    # a new checkpoint reads the compacted night like any other: every alert, once
    paths, query = science_query(spark, tmp_path, "fresh")
    fresh = finish(spark, paths, query, duration=120)
    assert fresh["alerts"] == 229 and fresh["balanced"] and keys(spark, paths["science"]) == before


def test_a_stage_is_refused_while_a_compaction_runs_and_a_killed_one_does_not_block(fresh_spark, kafka_bootstrap,
                                                                                  topic, tmp_path):
    fink = FinkConfig(kafka_bootstrap=kafka_bootstrap, data_dir=str(tmp_path))
    cfg = s2r.Stream2RawConfig(topic=topic)
    raw = cfg.paths(fink)["raw"]
    store = filestore.FileStore(fresh_spark, raw)
    lock = {"partition": NIGHT, "pid": os.getpid(), "host": socket.gethostname()}
    store.write_text(json.dumps(lock), table_use.LOCK)  # a compaction of this process, mid-way
    with pytest.raises(table_use.TableInUse, match=f"{NIGHT} is being compacted"):
        s2r.build(fresh_spark, cfg, fink)
    assert not any(r["running"] for r in table_use.records(fresh_spark, raw))
    store.write_text(json.dumps({**lock, "pid": 2 ** 22 + 1}), table_use.LOCK)  # killed: no such process
    s2r.build(fresh_spark, cfg, fink)


def test_a_writer_with_a_batch_to_replay_keeps_its_files(fresh_spark, tmp_path):
    """A killed writer whose last batch was planned but not committed would read that batch's
    files back on its restart: the night cannot be compacted until it has run again."""
    raw, checkpoint = tmp_path / "raw", tmp_path / "checkpoint"
    fresh_spark.range(3).selectExpr("id as candid", "20261127 as night").write.partitionBy("night") \
        .parquet(str(raw))
    (checkpoint / "offsets").mkdir(parents=True)
    (checkpoint / "commits").mkdir()
    (checkpoint / "metadata").write_text('{"id":"0b0e6b0e-0000-4000-8000-000000000000"}')
    for batch in ("0", "1"):
        (checkpoint / "offsets" / batch).write_text("v1\n{}\n")
    (checkpoint / "commits" / "0").write_text("v1\n{}\n")
    table_use.attach(fresh_spark, str(raw), "write", str(checkpoint), "a_killed_writer")
    table_use.ended("a_killed_writer", "0b0e6b0e")
    with pytest.raises(table_use.TableInUse, match="has batch 1 planned but not committed"):
        filestore.compact(fresh_spark, str(raw), NIGHT)
    (checkpoint / "commits" / "1").write_text("v1\n{}\n")
    assert filestore.compact(fresh_spark, str(raw), NIGHT)["rows"] == 3
