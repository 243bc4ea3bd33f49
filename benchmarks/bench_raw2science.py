"""Benchmark of raw2science: throughput with the cuts and every built-in module, the cost of
each module, and the latency from raw arrival to science output at a survey-like rate.

Part 1 (throughput): the real ZTF 4.02 alerts of ``../shared/datasim/ztf/native-4.02_*``
(looped with new candids) go through Kafka and stream2raw into a raw archive; raw2science
then catches up on it (``availableNow``) in batches of several raw files.

Part 2 (latency): the simulator publishes at ``--rate`` alerts/s while stream2raw and
raw2science both run with processing-time triggers in one Spark session; per alert, the
latency runs from the time the alert's file was written to the raw archive (raw arrival) to
the time its science file was written (science output); also reported: to ``processingEnd``,
and from ``brokerIngestTimestamp`` (when stream2raw started the batch that took it from
Kafka) and from the Kafka timestamp (end to end).
Needs the local Kafka (`make services`)::

    .venv/bin/python benchmarks/bench_raw2science.py [--alerts 20000] [--rate 300] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench_stream2raw import SHARED, unique_copies
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig
from fink.io import kafka
from fink.runtime import streaming
from fink.science.modules import BUILTIN
from fink.sim.simulator import SimulatorConfig, replay
from fink.sim.sources import read_messages
from fink.stages import raw2science as r2s
from fink.stages import stream2raw as s2r

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = str(ROOT / "datasim" / "sample_night" / "catalogue.csv")


def science_config(tmp: str, **options) -> r2s.Raw2ScienceConfig:
    return r2s.Raw2ScienceConfig(
        modules=BUILTIN, module_params={"fink.science.modules.xmatch:crossmatch": {"catalogue_path": CATALOGUE}},
        **options)


def raw_archive(spark, bootstrap: str, messages: list[bytes], alerts: int, tmp: str) -> FinkConfig:
    """``alerts`` unique copies of ``messages`` through Kafka and stream2raw into ``tmp``/raw."""
    topic = f"bench_raw_{uuid.uuid4().hex[:8]}"
    replay(SimulatorConfig(topic=topic), bootstrap, messages=unique_copies(messages, alerts), progress=False)
    fink = FinkConfig(kafka_bootstrap=bootstrap, data_dir=tmp, log_level="ERROR")
    raw = s2r.Stream2RawConfig(topic=topic, max_offsets_per_trigger=5000, files_per_batch=2)
    streaming.run_until([streaming.start(s2r.build(spark, raw, fink).trigger(availableNow=True), s2r.QUERY_NAME)],
                        duration=1800, poll=1.0)
    return fink


def throughput(spark, bootstrap: str, messages: list[bytes], alerts: int, tmp: str) -> dict:
    fink = raw_archive(spark, bootstrap, messages, alerts, tmp)
    cfg = science_config(tmp, max_files_per_trigger=4)
    t0 = time.perf_counter()
    result = streaming.run_until([streaming.start(r2s.build(spark, cfg, fink).trigger(availableNow=True),
                                                  r2s.QUERY_NAME)], duration=1800, poll=1.0)
    wall = time.perf_counter() - t0
    progress = [p for p in result.progress[r2s.QUERY_NAME] if p.get("numInputRows")]
    totals = r2s.reconcile(spark, result.progress[r2s.QUERY_NAME], cfg.paths(fink)["science"])
    steady = progress[1:] or progress
    rows = sum(p["numInputRows"] for p in steady)
    secs = sum(p["durationMs"]["triggerExecution"] for p in steady) / 1000
    return {"alerts": totals["alerts"], "kept": totals["kept"], "rejected": totals["reasons"],
            "balanced": totals["balanced"], "batches": len(progress), "wall_seconds": round(wall, 1),
            "sustained_alerts_per_s": round(rows / secs, 1),
            "batch_seconds_p50": round(statistics.median(p["durationMs"]["triggerExecution"] / 1000
                                                         for p in progress), 2),
            "module_ms_per_1000_alerts": {k: round(1000 * 1000 * v["seconds"] / max(totals["kept"], 1), 1)
                                          for k, v in totals["modules"].items()},
            "module_errors": {k: v["errors"] for k, v in totals["modules"].items()}}


def latency(spark, bootstrap: str, messages: list[bytes], rate: float, seconds: float, tmp: str,
            files: int = 1) -> dict:
    topic = f"bench_lat_{uuid.uuid4().hex[:8]}"
    count = int(rate * seconds)
    stream = unique_copies(messages, count)
    fink = FinkConfig(kafka_bootstrap=bootstrap, data_dir=tmp, log_level="ERROR")

    kafka.ensure_topic(bootstrap, topic)
    raw = s2r.Stream2RawConfig(topic=topic, starting_offsets="earliest", files_per_batch=files)
    cfg = science_config(tmp, files_per_batch=files)
    q1 = streaming.start(s2r.build(spark, raw, fink).trigger(processingTime="1 second"), s2r.QUERY_NAME)
    q2 = streaming.start(r2s.build(spark, cfg, fink).trigger(processingTime="1 second"), r2s.QUERY_NAME)
    sim = threading.Thread(target=replay, args=(SimulatorConfig(topic=topic, rate=rate, count=count), bootstrap),
                           kwargs={"messages": stream, "progress": False})
    sim.start()
    science = cfg.paths(fink)["science"]

    def done(queries):
        if not sim.is_alive():
            raw_n = sum(json.loads(p.read_text())["archived"] for p in Path(tmp, "raw", "_commits").glob("*.json"))
            if raw_n >= count and q2.lastProgress and q2.lastProgress.get("numInputRows") == 0:
                for q in queries:
                    q.stop()

    result = streaming.run_until([q1, q2], duration=seconds + 300, poll=1.0, on_poll=done)
    sim.join()
    batches = {}
    for name, progress in result.progress.items():
        busy = [p for p in progress if p.get("numInputRows")]
        batches[name] = {"batches": len(busy),
                         "rows_p50": statistics.median(p["numInputRows"] for p in busy) if busy else 0,
                         "seconds_p50": round(statistics.median(p["durationMs"]["triggerExecution"] / 1000
                                                                for p in busy), 2) if busy else 0,
                         "steps_ms_p50": {k: statistics.median(p["durationMs"].get(k, 0) for p in busy)
                                          for k in busy[0]["durationMs"]} if busy else {}}
        mods = [m for m in (streaming.observed(p, r2s.MODULES_METRICS) for p in busy) if m is not None]
        if mods:
            batches[name]["module_seconds_per_batch_p50"] = {
                k[:-len("_seconds")]: round(statistics.median(float(m[k] or 0) for m in mods), 3)
                for k in mods[0] if k.endswith("_seconds")}
    from pyspark.sql import functions as F

    # an alert arrives in the raw archive when its file is written there (then moved in whole)
    landed = s2r.read_raw(spark, str(Path(tmp, "raw"))).select(
        "candid", F.col("_metadata.file_modification_time").alias("landed"))
    # the science archive's own files for their write times, the rows whole (read_science) for the rest
    written = spark.read.parquet(science).select("candid", F.col("_metadata.file_modification_time").alias("written"))
    out = r2s.read_science(spark, science).join(written, "candid")
    out = out.join(landed, "candid").select(
        (F.col("written").cast("double") - F.col("landed").cast("double")).alias("files"),
        (F.col("processingEnd").cast("double") - F.col("landed").cast("double")).alias("file"),
        (F.col("processingEnd").cast("double") - F.col("brokerIngestTimestamp").cast("double")).alias("raw"),
        (F.col("processingEnd").cast("double") - F.col("kafka_timestamp").cast("double")).alias("kafka"))
    pdf = out.toPandas()
    q = lambda s, x: round(float(s.quantile(x)), 2)  # noqa: E731
    return {"rate_alerts_per_s": rate, "published": count, "science_rows": len(pdf),
            "latency_raw_file_to_science_file_s": {"p50": q(pdf["files"], 0.5), "p95": q(pdf["files"], 0.95)},
            "latency_raw_file_to_processing_end_s": {"p50": q(pdf["file"], 0.5), "p95": q(pdf["file"], 0.95)},
            "latency_from_stream2raw_ingest_s": {"p50": q(pdf["raw"], 0.5), "p95": q(pdf["raw"], 0.95)},
            "latency_from_kafka_s": {"p50": q(pdf["kafka"], 0.5), "p95": q(pdf["kafka"], 0.95)},
            "batches": batches}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--files-per-batch", type=int, default=1, help="of both stages, in the latency run")
    parser.add_argument("--skip", choices=["throughput", "latency"], default=None)
    parser.add_argument("--conf", action="append", default=[], help="extra Spark setting key=value")
    args = parser.parse_args()
    messages = [m for folder in sorted(SHARED.glob("native-4.02_*")) for m in read_messages(folder)]
    bootstrap = ServicesConfig.load().kafka_bootstrap
    from fink.runtime.session import get_spark

    report = {}
    extra = dict(kv.split("=", 1) for kv in args.conf)
    spark = get_spark(FinkConfig(kafka_bootstrap=bootstrap, log_level="ERROR", spark_conf=extra),
                      app_name="bench-raw2science")
    try:
        if args.skip != "throughput":
            with tempfile.TemporaryDirectory() as tmp:
                report["throughput"] = throughput(spark, bootstrap, messages, args.alerts, tmp)
                print(json.dumps(report["throughput"]), flush=True)
        if args.skip != "latency":
            with tempfile.TemporaryDirectory() as tmp:
                report["latency"] = latency(spark, bootstrap, messages, args.rate, args.seconds, tmp,
                                            args.files_per_batch)
    finally:
        streaming.stop_active(spark)
        spark.stop()
    print(json.dumps(report, indent=1))
    save_result("raw2science", {"args": vars(args), **report})


if __name__ == "__main__":
    with kafka.temporary_topics(ServicesConfig.load().kafka_bootstrap):  # the broker's disk keeps no bench data
        main()
