"""Set-aside messages at full size, with the stage's default driver heap (issue 21, item 2).

3,000 junk messages of 900 KB (2.7 GB), then a real ZTF night replayed 40 times (every copy
after the first a duplicate), through stream2raw with its defaults: every message must be
accounted for (archived or quarantined with its bytes) while the driver's heap stays bounded.
Needs the local Kafka (`make services`) and ``../shared/datasim``::

    .venv/bin/python benchmarks/bench_quarantine.py [--junk 3000] [--replays 40]

Writes ``benchmarks/results/<date>-quarantine.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig
from fink.io import kafka
from fink.runtime import streaming
from fink.runtime.session import get_spark
from fink.sim.sources import read_messages
from fink.stages import stream2raw as s2r

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasim" / "ztf" / "native-4.02_fink-broker-2023-10"


def publish(bootstrap: str, topic: str, junk: int, size: int, night: list[bytes], replays: int) -> int:
    """The junk, then the night ``replays`` times; made one message at a time (2.7 GB of junk
    never sits in this process)."""
    from confluent_kafka import Producer

    kafka.ensure_topic(bootstrap, topic, partitions=2)
    producer = Producer(kafka.client_config(bootstrap, **{"message.max.bytes": 10_000_000, "linger.ms": 20}))
    rng, sent = np.random.default_rng(7), 0

    def send(value: bytes) -> None:
        nonlocal sent
        while True:
            try:
                producer.produce(topic, value)
                break
            except BufferError:
                producer.poll(0.5)
        sent += 1
        producer.poll(0)

    for _ in range(junk):
        send(b"Z" + rng.bytes(size - 1))
    for _ in range(replays):
        for message in night:
            send(message)
    producer.flush(300)
    return sent


class HeapWatch(threading.Thread):
    """The driver JVM's heap: the peak of its used heap sampled every 0.25 s (garbage
    included: the JVM lets it fill before collecting), and every 2 s the heap used right
    after a full collection asked for (``System.gc()``): the live data, what must stay bounded."""

    def __init__(self, spark):
        super().__init__(daemon=True)
        jvm = spark.sparkContext._jvm
        self.system, self.bean = jvm.java.lang.System, jvm.java.lang.management.ManagementFactory.getMemoryMXBean()
        self.peak, self.live, self.done = 0, 0, False
        self.max = int(self.bean.getHeapMemoryUsage().getMax())

    def run(self) -> None:
        k = 0
        while not self.done:
            self.peak = max(self.peak, int(self.bean.getHeapMemoryUsage().getUsed()))
            k += 1
            if k % 8 == 0:
                self.system.gc()
                self.live = max(self.live, int(self.bean.getHeapMemoryUsage().getUsed()))
            time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junk", type=int, default=3000)
    parser.add_argument("--junk-bytes", type=int, default=900_000)
    parser.add_argument("--replays", type=int, default=40)
    args = parser.parse_args()
    night = list(read_messages(SHARED))
    bootstrap = ServicesConfig.load().kafka_bootstrap
    topic = f"bench_quarantine_{uuid.uuid4().hex[:8]}"
    with kafka.temporary_topics(bootstrap), tempfile.TemporaryDirectory(prefix="bench-quarantine-") as tmp:
        t0 = time.perf_counter()
        sent = publish(bootstrap, topic, args.junk, args.junk_bytes, night, args.replays)
        published = time.perf_counter() - t0
        fink = FinkConfig(kafka_bootstrap=bootstrap, data_dir=tmp, log_level="ERROR")
        spark = get_spark(fink, app_name="bench-quarantine")  # the stages' defaults: driver heap included
        cfg = s2r.Stream2RawConfig(topic=topic)
        watch = HeapWatch(spark)
        watch.start()
        t0 = time.perf_counter()
        query = streaming.start(s2r.build(spark, cfg, fink).trigger(availableNow=True), s2r.QUERY_NAME)
        result = streaming.run_until([query], duration=3600, poll=1.0)
        seconds = time.perf_counter() - t0
        watch.done = True
        paths = cfg.paths(fink)
        totals = s2r.reconcile(spark, result.progress[s2r.QUERY_NAME], paths["raw"])
        from pyspark.sql import functions as F

        quarantine = {r["reason"]: {"messages": r["n"], "bytes": r["bytes"]} for r in spark.read.parquet(
            paths["quarantine"]).groupBy("reason").agg(F.count("*").alias("n"),
                                                      F.sum(F.length("raw")).alias("bytes")).collect()}
    distinct = len(night)
    out = {"date": time.strftime("%Y-%m-%d"), "junk": args.junk, "junk_bytes": args.junk_bytes,
           "night_alerts": distinct, "replays": args.replays, "messages_sent": sent,
           "bytes_sent": args.junk * args.junk_bytes + args.replays * sum(len(m) for m in night),
           "publish_s": round(published, 1), "stream2raw_s": round(seconds, 1), "batches": totals["batches"],
           "messages": totals["messages"], "archived": totals["archived"], "quarantined": totals["quarantined"],
           "reasons": totals["reasons"], "balanced": totals["balanced"], "quarantine": quarantine,
           "driver_heap_max_mib": round(watch.max / 2**20), "driver_heap_peak_mib": round(watch.peak / 2**20),
           "driver_heap_live_peak_mib": round(watch.live / 2**20),  # after a full GC, every 2 s
           "expected": {"archived": distinct, "not_avro": args.junk, "duplicate": distinct * (args.replays - 1)}}
    print(json.dumps(out, indent=1))
    save_result("quarantine", out, notes="Set-aside messages at full size through stream2raw with the stages' "
                "default 2 GB driver heap: every message archived or quarantined with its bytes. The live peak "
                "is the heap used right after a full collection, sampled every 2 s.")


if __name__ == "__main__":
    main()
