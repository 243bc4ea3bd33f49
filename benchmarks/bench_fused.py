"""Benchmark of a design the broker does not have: the stages fused into one query.

Each stage of the broker is its own streaming query, and an alert crosses three file hops
(Kafka -> raw -> science -> topic), each paying a trigger wait and a batch's fixed costs: about
10 s end to end even at 30 alerts/s (``bench_e2e.py``). Here one query reads Kafka and, in
each micro-batch, calls the stages' own batch functions in turn: stream2raw's
``write_batch``, raw2science's cuts, modules and ``write_batch`` on that batch's raw files,
distribution's filters and ``Sink`` on that batch's science files, and with ``--archive``
the archive's ``Sink``. Same code, same exactly-once writes (keyed by the one query's batch
id), one trigger. It measures what such a design would give on this machine: latency from
the simulator's publish to a consumer of a topic that receives every kept alert (one alert in
five decoded, after a warm-up of 200 alerts), and the batch steps' seconds.

Real ZTF 4.02 alerts of ``../shared/datasim/ztf/native-4.02_*``; needs the local services::

    .venv/bin/python benchmarks/bench_fused.py [--rate 100] [--seconds 60] [--archive]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid

from bench_e2e import Receiver
from bench_raw2science import science_config
from bench_stream2raw import SHARED, unique_copies
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig
from fink.io import hbase, kafka
from fink.runtime import streaming
from fink.runtime.session import get_spark
from fink.sim.simulator import SimulatorConfig, replay
from fink.sim.sources import read_messages
from fink.stages import archive, science_stream
from fink.stages import distribution as dist
from fink.stages import raw2science as r2s
from fink.stages import stream2raw as s2r
from fink.stages import topics as topics_
from fink.stages.duplicates import ArchivedCandids


def batch_files(root: str, batch_id: int) -> str:
    """The files batch ``batch_id`` published into an archive (``fink.io.filestore`` names them so)."""
    return f"{root}/night=*/part-b{batch_id:010d}-*"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--archive", action="store_true", help="the archive's HBase writes in the same batch")
    args = parser.parse_args()
    bootstrap = ServicesConfig.load().kafka_bootstrap
    messages = [m for f in sorted(SHARED.glob("native-4.02_*")) for m in read_messages(f)]
    tmp = tempfile.mkdtemp(prefix="bench_fused")
    spark = get_spark(FinkConfig(spark_master="local[2]", spark_conf={"spark.driver.memory": "4g"}),
                      app_name="bench-fused")
    topic, out_topic = f"fused_in_{uuid.uuid4().hex[:8]}", f"fused_out_{uuid.uuid4().hex[:8]}"
    kafka.ensure_topic(bootstrap, topic)
    fink = FinkConfig(kafka_bootstrap=bootstrap, data_dir=tmp, log_level="ERROR")
    raw = s2r.Stream2RawConfig(topic=topic, starting_offsets="earliest", files_per_batch=1)
    sci = science_config(tmp, files_per_batch=1)
    dcfg = dist.DistributionConfig(filters={out_topic: "fink.filters.builtin:everything"})
    raw_paths, sci_paths, checkpoint = raw.paths(fink), sci.paths(fink), f"{tmp}/checkpoints/fused"

    rows = s2r.transform(s2r.source(spark, raw, bootstrap), raw)
    index = ArchivedCandids(spark, raw_paths["raw"], "candid")
    raw_schema, modules = r2s.raw_schema(spark), sci.load_modules()
    sci_schema = science_stream.science_schema(spark, sci_paths["science"], sci)
    filters = dcfg.load_filters()
    topics = [f.topic for f in filters]
    alert_schema = topics_.alert_columns(spark.createDataFrame([], sci_schema)).schema
    encs = topics_.encodings(alert_schema, dcfg.topic_options, topics)
    topics_.prepare_topics(bootstrap, encs, topics, dcfg.partitions, dcfg.retention_ms)
    deliver = dist.Sink(bootstrap, topics, encs, checkpoint)  # its outbox and delivery id: the fused query's
    table = f"bench_fused_{uuid.uuid4().hex[:6]}"
    store = archive.build(spark, archive.ArchiveConfig(table=table), fink, producer=sci).fink_sink \
        if args.archive else None
    steps: list[list[float]] = []

    def fused(batch, batch_id):
        t = [time.perf_counter()]
        if s2r.write_batch(batch, batch_id, raw, raw_paths, bootstrap, index).get("archived"):
            raw_rows = spark.read.schema(raw_schema).option("basePath", raw_paths["raw"]) \
                .parquet(batch_files(raw_paths["raw"], batch_id))
            t.append(time.perf_counter())
            r2s.write_batch(r2s.transform(raw_rows, sci, modules), batch_id, sci, sci_paths)
            t.append(time.perf_counter())
            science = spark.read.schema(sci_schema).option("basePath", sci_paths["science"]) \
                .parquet(batch_files(sci_paths["science"], batch_id))
            deliver(dist.select(science, filters), batch_id)
            t.append(time.perf_counter())
            if store is not None:
                store(science, batch_id)
                t.append(time.perf_counter())
        steps.append([b - a for a, b in zip(t, t[1:], strict=False)])

    receiver = Receiver(bootstrap, out_topic)
    try:
        query = streaming.start(rows.writeStream.foreachBatch(fused).option("checkpointLocation", checkpoint)
                                .queryName("fused").trigger(processingTime="1 second"), "fused")
        receiver.start()
        count = int(args.rate * args.seconds)
        stream = unique_copies(messages, 200 + count)  # one set of fresh candids: none is a duplicate
        replay(SimulatorConfig(topic=topic, rate=100, count=200), bootstrap, messages=stream[:200], progress=False)
        time.sleep(25)  # the warm-up through: the Python workers started, the plans compiled
        receiver.arrivals.clear()
        replay(SimulatorConfig(topic=topic, rate=args.rate, count=count), bootstrap, messages=stream[200:],
               progress=False)
        time.sleep(20)
        query.stop()
        deliver.flush()
    finally:
        receiver.done.set()
        streaming.stop_active(spark)
        if store is not None:
            conn = hbase.connect(*fink.hbase_host_port)
            try:
                hbase.delete_tables(conn, table)
            finally:
                conn.close()
        kafka.delete_topics(bootstrap, [topic, out_topic, f"{out_topic}_schema"])
        shutil.rmtree(tmp, ignore_errors=True)
    receiver.join()
    lat = sorted(arrival - sent for arrival, sent in receiver.arrivals)
    busy = [p for p in query.recentProgress if p.get("numInputRows")][2:]
    names = ["stream2raw", "raw2science", "distribution", "archive"][: max(map(len, steps), default=0)]
    report = {
        "rate": args.rate, "archive": args.archive, "received": receiver.received, "latency_sample": len(lat),
        "latency_s": {f"p{q}": round(lat[int(q / 100 * (len(lat) - 1))], 2) for q in (50, 95, 99)} if lat else None,
        "batches": len(busy), "batch_rows_p50": statistics.median(p["numInputRows"] for p in busy) if busy else None,
        "batch_seconds_p50": {n: round(statistics.median(s[i] for s in steps if len(s) > i), 2)
                              for i, n in enumerate(names)},
    }
    print(json.dumps(report, indent=1))
    save_result("fused-archive" if args.archive else "fused", report)
    spark.stop()


if __name__ == "__main__":
    main()
