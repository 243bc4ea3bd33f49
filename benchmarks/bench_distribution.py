"""Benchmark of distribution: its cost with 1, 10 and 50 filters, and the end-to-end latency
from the simulator to a consumer of a filtered topic with every stage running.

Part 1 (cost): the real ZTF 4.02 alerts of ``../shared/datasim/ztf/native-4.02_*`` (looped
with new candids) go through Kafka, stream2raw and raw2science into a science archive once;
distribution then catches up on it (``availableNow``) with 1, 10 and 50 filters, each filter
selecting 2 % of the alerts (``candid % 50 == k``), so the output grows with the filters as
it would with real users. Reported: alerts/s read and messages/s written, per run.

Part 2 (end to end): the simulator publishes at ``--rate`` alerts/s while stream2raw,
raw2science and distribution run side by side in one Spark session (processing-time
triggers); a consumer of the filtered topic records when each alert arrives. Latency per
alert = arrival at the consumer - the alert's Kafka timestamp (when the simulator published
it). Needs the local Kafka (`make services`)::

    .venv/bin/python benchmarks/bench_distribution.py [--alerts 10000] [--rate 300] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import types
import uuid

import pandas as pd
from bench_raw2science import raw_archive, science_config
from bench_stream2raw import SHARED, unique_copies
from results import save as save_result

from fink.config import FinkConfig, ServicesConfig
from fink.filters import alert_filter
from fink.io import kafka
from fink.runtime import metrics, streaming
from fink.sim.simulator import SimulatorConfig, replay
from fink.sim.sources import read_messages
from fink.stages import distribution as dist
from fink.stages import raw2science as r2s
from fink.stages import stream2raw as s2r


def _bench_filters():
    """A module of the benchmark's filter, sent to the Python workers by value."""
    from pyspark import cloudpickle

    mod = types.ModuleType("bench_filters")

    @alert_filter(inputs=["candid"], version="1.0")
    def bucket(candid: pd.Series, *, k: int = 0, n: int = 50) -> pd.Series:
        return candid % n == k

    bucket.__module__ = mod.__name__
    mod.bucket = bucket
    sys.modules[mod.__name__] = mod
    cloudpickle.register_pickle_by_value(mod)


def filters(n: int, tag: str) -> tuple[dict, dict]:
    topics = {f"bench_{tag}_{n}_{k:02d}": "bench_filters:bucket" for k in range(n)}
    return topics, {t: {"k": k, "n": 50} for k, t in enumerate(topics)}


def science_archive(spark, bootstrap: str, messages: list[bytes], alerts: int, tmp: str) -> FinkConfig:
    fink = raw_archive(spark, bootstrap, messages, alerts, tmp)
    cfg = science_config(tmp, max_files_per_trigger=2)
    streaming.run_until([streaming.start(r2s.build(spark, cfg, fink).trigger(availableNow=True), r2s.QUERY_NAME)],
                        duration=1800, poll=1.0)
    return fink


def cost(spark, fink: FinkConfig, n: int, tmp: str) -> dict:
    topics, params = filters(n, uuid.uuid4().hex[:6])
    cfg = dist.DistributionConfig(filters=topics, filter_params=params, max_files_per_trigger=8,
                                  checkpoint=f"{tmp}/ck_{uuid.uuid4().hex}")
    t0 = time.perf_counter()
    writer = dist.build(spark, cfg, fink)
    setup = time.perf_counter() - t0
    t0, started = time.perf_counter(), time.time()
    result = streaming.run_until([streaming.start(writer.trigger(availableNow=True), dist.QUERY_NAME)],
                                 duration=1800, poll=0.5)
    totals = dist.reconcile(result.progress[dist.QUERY_NAME], writer.fink_sink)  # the last transaction too
    ended, wall = time.time(), time.perf_counter() - t0
    busy = [p for p in result.progress[dist.QUERY_NAME] if p.get("numInputRows")]
    steady = busy[1:] or busy  # the first batch pays the Python workers' start
    # from the end of the first batch to the last batch's Kafka commit: a transaction runs while
    # the next batch is encoded, so the batches' own durations would leave the last one out
    first = busy[0] if len(busy) > 1 else None
    secs = ended - metrics.epoch(first["timestamp"]) - first["durationMs"]["triggerExecution"] / 1000 \
        if first else wall
    rows = sum(p["numInputRows"] for p in steady)
    delivered = sum(t["delivered"] for t in totals["topics"].values())
    notes = {n["batch"]: n["value"].get("seconds", {}) for n in metrics.Store().notes(query=dist.QUERY_NAME)
             if n["time"] >= started}
    batches = {int(p["batchId"]) for p in steady}
    steps = {}  # where the steady batches' time went: the Spark job encoding the messages, the transaction
    for batch, laps in notes.items():
        if batch in batches:
            for step, seconds in laps.items():
                steps[step] = steps.get(step, 0.0) + seconds
    return {"filters": n, "alerts": totals["alerts"], "messages": delivered, "balanced": totals["balanced"],
            "topics_setup_s": round(setup, 1), "wall_s": round(wall, 1),
            "sustained_alerts_per_s": round(rows / secs, 1) if secs else None,
            "messages_per_s": round(delivered * rows / max(totals["alerts"], 1) / secs, 1) if secs else None,
            "batch_seconds_p50": round(statistics.median(p["durationMs"]["triggerExecution"] / 1000
                                                         for p in busy), 2),
            "step_seconds": {k: round(v, 1) for k, v in steps.items()}, "steady_seconds": round(secs, 1),
            "filter_ms_per_1000_alerts": round(1e6 * sum(f["seconds"] for f in totals["filters"].values())
                                               / max(totals["alerts"], 1), 2)}


def end_to_end(spark, bootstrap: str, messages: list[bytes], rate: float, seconds: float, tmp: str) -> dict:
    from confluent_kafka import Consumer

    from fink.client import decode

    topic = f"bench_e2e_{uuid.uuid4().hex[:8]}"
    count = int(rate * seconds)
    stream = unique_copies(messages, count)
    fink = FinkConfig(kafka_bootstrap=bootstrap, data_dir=tmp, log_level="ERROR")

    kafka.ensure_topic(bootstrap, topic)
    out_topic = f"bench_out_{uuid.uuid4().hex[:8]}"
    raw = s2r.Stream2RawConfig(topic=topic, starting_offsets="earliest", files_per_batch=1)
    sci = science_config(tmp, files_per_batch=1)
    # every alert that passes the cuts goes out: the latency of each is measured
    cfg = dist.DistributionConfig(filters={out_topic: "fink.filters.builtin:bright"},
                                  filter_params={out_topic: {"limit": 99.0}}, max_files_per_trigger=0)
    arrivals: list[tuple[float, float]] = []
    stop = threading.Event()

    def consume():
        c = Consumer(kafka.client_config(bootstrap, **{"group.id": f"bench-{out_topic}",
                                                       "auto.offset.reset": "earliest"}))
        c.subscribe([out_topic])
        while not stop.is_set():
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            now = time.time()
            alert = decode(msg.key(), msg.value())
            arrivals.append((now, alert["kafka_timestamp"].timestamp()))
        c.close()

    q3_writer = dist.build(spark, cfg, fink)
    reader = threading.Thread(target=consume)
    reader.start()
    q1 = streaming.start(s2r.build(spark, raw, fink).trigger(processingTime="1 second"), s2r.QUERY_NAME)
    q2 = streaming.start(r2s.build(spark, sci, fink).trigger(processingTime="1 second"), r2s.QUERY_NAME)
    q3 = streaming.start(q3_writer.trigger(processingTime="1 second"), dist.QUERY_NAME)
    sim = threading.Thread(target=replay, args=(SimulatorConfig(topic=topic, rate=rate, count=count), bootstrap),
                           kwargs={"messages": stream, "progress": False})
    sim.start()
    kept = {"n": None}

    def done(queries):
        if sim.is_alive():
            return
        if kept["n"] is None and q2.lastProgress and q2.lastProgress.get("numInputRows") == 0:
            science = r2s.read_science(spark, sci.paths(fink)["science"])
            kept["n"] = science.count()
        if kept["n"] is not None and len(arrivals) >= kept["n"]:
            for q in queries:
                q.stop()

    result = streaming.run_until([q1, q2, q3], duration=seconds + 300, poll=1.0, on_poll=done)
    stop.set()
    reader.join()
    sim.join()
    lat = pd.Series([a - k for a, k in arrivals])
    q = lambda x: round(float(lat.quantile(x)), 2) if len(lat) else None  # noqa: E731
    batches = {name: round(statistics.median(p["durationMs"]["triggerExecution"] / 1000 for p in prog
                                             if p.get("numInputRows")), 2)
               for name, prog in result.progress.items() if any(p.get("numInputRows") for p in prog)}
    return {"rate_alerts_per_s": rate, "published": count, "kept_by_cuts": kept["n"], "received": len(arrivals),
            "latency_s": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": q(1.0)},
            "batch_seconds_p50": batches, "stopped": result.reason}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alerts", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--skip", choices=["cost", "e2e"], default=None)
    args = parser.parse_args()
    _bench_filters()
    messages = [m for folder in sorted(SHARED.glob("native-4.02_*")) for m in read_messages(folder)]
    bootstrap = ServicesConfig.load().kafka_bootstrap
    from fink.runtime.session import get_spark

    spark = get_spark(FinkConfig(kafka_bootstrap=bootstrap, log_level="ERROR"), app_name="bench-distribution")
    report: dict = {}
    try:
        if args.skip != "cost":
            with tempfile.TemporaryDirectory() as tmp:
                fink = science_archive(spark, bootstrap, messages, args.alerts, tmp)
                report["cost"] = []
                for n in (1, 10, 50):
                    report["cost"].append(cost(spark, fink, n, tmp))
                    print(json.dumps(report["cost"][-1]), flush=True)
        if args.skip != "e2e":
            with tempfile.TemporaryDirectory() as tmp:
                report["end_to_end"] = end_to_end(spark, bootstrap, messages, args.rate, args.seconds, tmp)
    finally:
        streaming.stop_active(spark)
        spark.stop()
    print(json.dumps(report, indent=1))
    save_result("distribution", {"args": vars(args), **report})


if __name__ == "__main__":
    with kafka.temporary_topics(ServicesConfig.load().kafka_bootstrap):  # the broker's disk keeps no bench data
        main()
