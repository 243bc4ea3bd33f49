"""Benchmark of the archive stage: write throughput into the local HBase, and query times.

Real ZTF 4.02 alerts of ``../shared/datasim/ztf`` are looped with fresh identifiers
(objects keep several alerts each), run through stream2raw and raw2science into a science
archive, then the archive stage writes it to HBase with ``availableNow`` triggers. The
sustained rate leaves out the first batch (Python workers starting). Query times are the
median over objects picked from the archive.

    .venv/bin/python benchmarks/bench_archive.py --alerts 20000
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
import uuid

from bench_distribution import SHARED, science_archive
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig
from fink.io import kafka
from fink.io.hbase import connect, delete_tables
from fink.runtime import streaming
from fink.sim.sources import read_messages
from fink.stages import archive


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by the services, Spark's JVM, its Python workers and this driver."""
    import os

    import psutil

    from fink.ops import services

    def used(p):
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    out = {s.name: used(psutil.Process(s.pid)) for s in services.status() if s.pid}
    me = psutil.Process(os.getpid())
    children = me.children(recursive=True)
    out["spark_jvm"] = sum(used(p) for p in children if "java" in p.name())
    out["python_workers"] = sum(used(p) for p in children if "python" in p.name())
    out["driver"] = used(me)
    return out


def write(spark, fink: FinkConfig, table: str, files: int, pool: int, tags: bool = True) -> dict:
    cfg = archive.ArchiveConfig(table=table, max_files_per_trigger=files, pool_size=pool,
                                **({} if tags else {"tags": {}}),
                                checkpoint=f"{fink.data_dir}/ck_{uuid.uuid4().hex}")
    writer = archive.build(spark, cfg, fink)
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    result = streaming.run_until([streaming.start(writer.trigger(availableNow=True), archive.QUERY_NAME)],
                                 duration=1800, poll=0.5)
    wall, cpu1 = time.perf_counter() - t0, cpu_seconds()
    totals = archive.reconcile(result.progress[archive.QUERY_NAME], writer.fink_sink.written)
    busy = [p for p in result.progress[archive.QUERY_NAME] if p.get("numInputRows")]
    steady = busy[1:] or busy
    secs = sum(p["durationMs"]["triggerExecution"] for p in steady) / 1000
    rows = sum(p["numInputRows"] for p in steady)
    records = [writer.fink_sink.written[int(p["batchId"])] for p in steady]
    per = lambda key: round(1000 * sum(r.get(key, 0) for r in records) / max(rows, 1), 3)  # noqa: E731
    return {"pool_size": pool, "files_per_trigger": files, "alerts": totals["alerts"],
            "archived": totals["archived"], "balanced": totals["balanced"], "rows": totals["rows"],
            "wall_s": round(wall, 1), "sustained_alerts_per_s": round(rows / secs, 1) if secs else None,
            "batch_alerts_p50": statistics.median(p["numInputRows"] for p in busy),
            "cpu_ms_per_alert": {k: round(1000 * (cpu1[k] - cpu0.get(k, 0)) / max(totals["alerts"], 1), 3)
                                 for k in cpu1},
            "ms_per_alert": {"encode_in_tasks": per("encode_s"), "write_in_tasks": per("write_s"),
                             "batch": per("seconds")}}


def queries(fink: FinkConfig, table: str, objects: int = 30) -> dict:
    from fink.client.explorer import Archive

    with Archive(fink.hbase_thrift, table) as a:
        nights = a.nights()
        night = max(nights, key=nights.get)
        sample = a.night(night, columns=["objectId", "candidate"])
        random.seed(1)
        picks = random.sample(list(sample.itertuples()), min(objects, len(sample)))
        timings: dict[str, list[float]] = {}

        def timed(name, fn, *args, **kw):
            t0 = time.perf_counter()
            out = fn(*args, **kw)
            timings.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
            return out

        sizes = {"light_curve_points": [], "cone_alerts": []}
        for row in picks:
            sizes["light_curve_points"].append(len(timed("light_curve", a.light_curve, row.objectId)))
            timed("alerts_of_object", a.alerts, row.objectId)
            timed("cutouts", a.cutouts, row.objectId)
            sizes["cone_alerts"].append(len(timed("cone_60arcsec", a.cone, row.candidate["ra"],
                                                  row.candidate["dec"], 60.0)))
            timed("cone_60arcsec_ids_only", a.cone, row.candidate["ra"], row.candidate["dec"], 60.0,
                  columns=["objectId", "candid"])
            timed("latest_100_of_tag", a.latest, "early_snia", limit=100)
        timed("nights", a.nights)
        sizes["night_alerts"] = [len(timed("night_objectIds", a.night, night, columns=["objectId"]))]
        return {"objects": len(picks), "ms_p50": {k: round(statistics.median(v), 1) for k, v in timings.items()},
                "ms_max": {k: round(max(v), 1) for k, v in timings.items()},
                "median_sizes": {k: statistics.median(v) for k, v in sizes.items()}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=20000)
    parser.add_argument("--files", type=int, default=4, help="science files per micro-batch")
    parser.add_argument("--pool", type=int, nargs="+", default=[4])
    parser.add_argument("--no-tags", action="store_true", help="without the class index (tag filters)")
    args = parser.parse_args()
    from fink.runtime.session import get_spark

    services = ServicesConfig.load()
    messages = [m for folder in sorted(SHARED.glob("native-4.02_*")) for m in read_messages(folder)]
    spark = get_spark(FinkConfig(kafka_bootstrap=services.kafka_bootstrap, log_level="ERROR"),
                      app_name="bench-archive")
    report: dict = {"write": []}
    tables = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fink = science_archive(spark, services.kafka_bootstrap, messages, args.alerts, tmp)
            for pool in args.pool:
                table = f"bench_{uuid.uuid4().hex[:8]}"
                tables.append(table)
                report["write"].append(write(spark, fink, table, args.files, pool, tags=not args.no_tags))
                print(json.dumps(report["write"][-1]), flush=True)
            report["queries"] = queries(fink, tables[-1])
    finally:
        streaming.stop_active(spark)
        spark.stop()
        conn = connect(services.host, services.thrift_port)
        for table in tables:
            delete_tables(conn, table)
        conn.close()
    print(json.dumps(report, indent=1))
    save_result("archive", {"args": vars(args), **report})


if __name__ == "__main__":
    with kafka.temporary_topics(ServicesConfig.load().kafka_bootstrap):  # the broker's disk keeps no bench data
        main()
